"""Chapter 10: the course trains a small ResNet and a small ViT on the digits, and ships both.

    python -m course_lib.vision_training [--threads 2] [--quiet] [--out DIR]

Both models are ordinary Hub models: ``ResNetForImageClassification`` (basic blocks) and
``ViTForImageClassification`` built from ``course_lib.models`` with about the same number of
parameters (``RESNET_CONFIG``, ``VIT_CONFIG``: 79,962 and 83,338, within 5 %; every Linear's
width is a multiple of 32, so ``quantize="int4"`` groups fit too), trained on the same
training split (``course_lib.image_data``) with the same budget (``SETTINGS``: steps, batch
size, AdamW + warmup/cosine from ``course_lib.training``, the same light augmentation: random
shifts of up to one grid cell). The weights with the best validation accuracy are kept.

Each model is saved in the Hub's layout to ``course_lib/assets/digits-<resnet|vit>/``:
``config.json`` (``model_type``, ``architectures``, ``id2label``/``label2id`` "0".."9"),
``model.safetensors``, ``preprocessor_config.json`` (a ``ViTImageProcessor``: resize 8 -> 32,
rescale, normalise), ``README.md`` and ``training_log.json`` (the history ``training.train``
returns). ``transformers`` loads them as they are (``tests/test_vision_training.py``).

Then both are measured on the test split in float32 and in int8 (``load_model(folder,
quantize="int8")``: Linears and, for the ResNet, every convolution per output channel) and
the numbers go to ``course_lib/assets/digits-results/results.json`` (documented in its
README; ``check_results`` validates the layout). The whole run takes a few minutes on 2
cores (``--threads 1`` when other programs use them: 2 oversubscribed threads ran ~6x slower
here); it is seeded, so the same machine and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from course_lib import image_data
from course_lib.models import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification
from course_lib.results_file import ResultsError, ResultsLayout
from course_lib.training import AdamW, LossSum, WarmupCosineSchedule, cross_entropy, train, weight_decay_groups

COMMAND = "python -m course_lib.vision_training"
SCHEMA_VERSION = 1
MODELS = ("resnet", "vit")
ASSETS = {"resnet": "digits-resnet", "vit": "digits-vit"}
RESULTS_ASSET = "digits-results"
NUM_CLASSES = len(image_data.ID2LABEL)

# A ResNet-18-style model shrunk for 32 x 32 digits: stem 7 x 7 stride 2 + max pool (32 -> 8), then
# three stages of one basic block each, 16 -> 32 -> 64 channels (8 -> 8 -> 4 -> 2 pixels).
RESNET_CONFIG = {
    "model_type": "resnet", "num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32, 64],
    "depths": [1, 1, 1], "layer_type": "basic", "hidden_act": "relu", "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}
# A ViT-Base shrunk for 32 x 32 digits: 4 x 4 patches (64 tokens + [CLS]), width 64, 2 pre-LN layers.
VIT_CONFIG = {
    "model_type": "vit", "image_size": image_data.IMAGE_SIZE, "patch_size": 4, "num_channels": 3,
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 160,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "qkv_bias": True,
}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """One model's training run; the same for both models except the peak learning rate."""

    steps: int = 800  # optimizer steps (~40 epochs of the 1,259 training digits)
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    max_grad_norm: float = 1.0
    shift: int = 1  # augmentation: random shifts of -1..1 grid cells (4 pixels at 32 x 32)
    eval_every: int = 50
    seed: int = 10

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


SETTINGS = {"resnet": TrainSettings(lr=3e-3), "vit": TrainSettings(lr=2e-3)}


# --------------------------------------------------------------------------------------
# Models, loss, scores

def build_model(kind: str, seed: int | None = None) -> nn.Module:
    """A freshly initialised digit model: ``"resnet"`` or ``"vit"``, 10 classes named "0".."9"."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; use one of {', '.join(MODELS)}")
    if seed is not None:
        torch.manual_seed(seed)
    config_class, model_class, values = ((ResNetConfig, ResNetForImageClassification, RESNET_CONFIG)
                                         if kind == "resnet" else (ViTConfig, ViTForImageClassification, VIT_CONFIG))
    config = config_class.from_dict(dict(values))
    config.set_labels(id2label=image_data.ID2LABEL)
    return model_class(config)


def image_loss(model: nn.Module, batch: dict) -> LossSum:
    """Summed cross-entropy of an image classifier on ``{"pixel_values": (B, 3, H, W), "labels": (B,)}``."""
    logits = model(batch["pixel_values"])  # (B, num_labels)
    return LossSum(cross_entropy(logits, batch["labels"], reduction="sum"), batch["labels"].numel())


@torch.no_grad()
def predict_logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """Logits of every batch, concatenated: (N, num_labels) float32; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(b["pixel_values"]).float() for b in batches])
    finally:
        model.train(was_training)


def confusion_matrix(labels, predicted, num_classes: int = NUM_CLASSES) -> list[list[int]]:
    """``m[true][predicted]`` counts, a ``num_classes`` x ``num_classes`` list of ints."""
    m = [[0] * num_classes for _ in range(num_classes)]
    for y, p in zip(labels, predicted):
        m[int(y)][int(p)] += 1
    return m


def scores(labels, logits: torch.Tensor) -> dict:
    """``accuracy``, ``loss`` (mean cross-entropy), ``confusion_matrix``, ``misclassified`` (positions in the
    split, with ``predicted``) for logits (N, C) of a split whose labels are ``labels`` (N,)."""
    labels = torch.as_tensor(labels)
    predicted = logits.argmax(dim=-1)
    wrong = (predicted != labels).nonzero().flatten().tolist()
    return {"accuracy": int((predicted == labels).sum()) / len(labels),  # exact: correct / N
            "loss": float(cross_entropy(logits, labels)),
            "confusion_matrix": confusion_matrix(labels.tolist(), predicted.tolist()),
            "misclassified": wrong, "predicted": [int(predicted[i]) for i in wrong]}


# --------------------------------------------------------------------------------------
# Training one model

def train_model(kind: str, settings: TrainSettings | None = None, splits: dict | None = None,
                progress: bool = True) -> tuple[nn.Module, dict]:
    """Train the digit ``kind`` ("resnet" / "vit") from its seed; returns (model in eval mode with the best
    validation accuracy's weights, history as ``training.train`` returns it)."""
    settings = settings or SETTINGS[kind]
    splits = splits or image_data.digits_splits()
    model = build_model(kind, seed=settings.seed)
    batches = image_data.TrainBatches(splits["train"], batch_size=settings.batch_size, shift=settings.shift)
    validation = image_data.eval_batches(splits["validation"])
    labels = splits["validation"].labels

    def eval_fn(m):
        s = scores(labels, predict_logits(m, validation))
        return {"accuracy": s["accuracy"], "loss": s["loss"]}

    optimizer = AdamW(weight_decay_groups(model, settings.weight_decay), lr=settings.lr)
    schedule = WarmupCosineSchedule(optimizer, settings.warmup_steps, settings.steps, settings.min_lr_ratio)
    history = train(model, optimizer, batches, image_loss, schedule=schedule, max_steps=settings.steps,
                    max_grad_norm=settings.max_grad_norm, eval_fn=eval_fn, eval_every=settings.eval_every,
                    best_metric="accuracy", higher_is_better=True, seed=settings.seed, progress=progress,
                    desc=f"digits {kind}")
    return model, history


# --------------------------------------------------------------------------------------
# Saving in the Hub's layout

def _model_readme(kind: str, model: nn.Module, settings: TrainSettings, history: dict, test: dict) -> str:
    arch = "ResNetForImageClassification" if kind == "resnet" else "ViTForImageClassification"
    cfg = RESNET_CONFIG if kind == "resnet" else VIT_CONFIG
    shape = (f"basic blocks, embedding_size {cfg['embedding_size']}, hidden_sizes {cfg['hidden_sizes']}, "
             f"depths {cfg['depths']}" if kind == "resnet" else
             f"patch_size {cfg['patch_size']}, hidden_size {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
             f"{cfg['num_attention_heads']} heads, intermediate_size {cfg['intermediate_size']}")
    return f"""# digits-{kind}: the course's small {'ResNet' if kind == 'resnet' else 'ViT'} for handwritten digits

A `{arch}` ({shape}; {model.num_parameters():,} parameters) trained from scratch by
`{COMMAND}` on the course's training split of the UCI handwritten digits
(`course_lib/assets/digits/`, 1,259 of the 1,797 digits), in the Hugging Face layout:
`config.json`, `model.safetensors`, `preprocessor_config.json`. `transformers` loads it as it
is (`{arch}.from_pretrained(folder)`, `ViTImageProcessor.from_pretrained(folder)`), and so does
`course_lib.load_model(folder)`.

- **Input**: an 8 x 8 digit as an RGB picture (white ink on black), resized to 32 x 32
  (bilinear), rescaled to [0, 1] and normalised with mean = std = 0.5 (`preprocessor_config.json`).
- **Classes**: `id2label` "0".."9" (class i is the digit i).
- **Training**: {settings.steps} AdamW steps of {settings.batch_size} digits (peak lr {settings.lr}, {settings.warmup_steps}
  warmup steps then cosine to {settings.min_lr_ratio} x the peak, weight decay {settings.weight_decay} on weights only,
  gradients clipped to norm {settings.max_grad_norm}), each digit shifted by up to {settings.shift} grid cell at random;
  seed {settings.seed}; the weights of the best validation accuracy (step {history['best_step']}) are kept.
  `training_log.json` is the whole history (loss, learning rate, gradient norm per step;
  validation accuracy and loss every {settings.eval_every} steps).
- **Test accuracy** (359 held-out digits): {100 * test['accuracy']:.2f} %
  (`course_lib/assets/digits-results/results.json` has the confusion matrix, the errors, int8).

Licence: the weights are derived from the UCI digits (E. Alpaydin and C. Kaynak, 1998,
https://doi.org/10.24432/C50P49), CC BY 4.0, and are distributed under the same licence,
CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), with that attribution.
"""


def save_model(kind: str, model: nn.Module, folder: Path, settings: TrainSettings, history: dict,
               test: dict) -> Path:
    """``save_pretrained`` + ``preprocessor_config.json`` + ``README.md`` + ``training_log.json`` in ``folder``."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(image_data.DIGITS_PREPROCESSOR, indent=2) + "\n",
                                                     encoding="utf-8")
    log = {"settings": settings.as_dict(), "parameters": model.num_parameters(), "history": history}
    (folder / "training_log.json").write_text(json.dumps(log) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(_model_readme(kind, model, settings, history, test), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------
# Measuring: float32 vs int8, from the saved folders

def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (``quantization.model_nbytes``)."""
    from course_lib.quantization import model_nbytes

    return model_nbytes(model)


def measure_folder(folder: str | os.PathLike, quantize: str | None, splits: dict | None = None) -> dict:
    """``load_model(folder, quantize=...)`` scored on the test split: accuracy, loss, confusion matrix, errors,
    ``weight_bytes``, ``test_logits`` (N, 10) tensor (not written to results.json)."""
    from course_lib.loading import load_model

    splits = splits or image_data.digits_splits()
    model = load_model(folder, quantize=quantize)
    logits = predict_logits(model, image_data.eval_batches(splits["test"], Path(folder)))
    out = scores(splits["test"].labels, logits)
    out["weight_bytes"] = weight_bytes(model)
    out["test_logits"] = logits
    return out


def environment(threads: int) -> dict:
    """torch, python, platform, cpu (``timing.cpu_name``), cpu_count, threads, load_average_at_start (other
    programs' load: it slows the timings, not the scores)."""
    from course_lib.timing import cpu_count, cpu_name, load_average

    load = load_average()
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_name(), "cpu_count": cpu_count(), "threads": threads,
            "load_average_at_start": None if load is None else round(load, 2)}


def run(threads: int = 2, progress: bool = True, out_root: Path | None = None) -> dict:
    """Train both models, save them, measure float32 and int8; returns the results dict (not written)."""
    from course_lib.assets import HERE

    out_root = Path(out_root) if out_root is not None else HERE
    torch.set_num_threads(threads)
    splits = image_data.digits_splits()
    started = time.perf_counter()
    results = {"schema_version": SCHEMA_VERSION, "command": COMMAND,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
               "environment": environment(threads),
               "data": {"dataset": image_data.ASSET, "sha256": image_data.DIGITS_SHA256,
                        "split_sha256": dict(image_data.SPLIT_SHA256),
                        "sizes": {name: len(s) for name, s in splits.items()},
                        "test_indices": splits["test"].indices.tolist(),
                        "preprocessor": dict(image_data.DIGITS_PREPROCESSOR)},
               "models": {}}
    for kind in MODELS:
        settings = SETTINGS[kind]
        t0 = time.perf_counter()
        model, history = train_model(kind, settings, splits, progress)
        train_s = time.perf_counter() - t0
        validation = scores(splits["validation"].labels,
                            predict_logits(model, image_data.eval_batches(splits["validation"])))
        test = scores(splits["test"].labels, predict_logits(model, image_data.eval_batches(splits["test"])))
        folder = save_model(kind, model, out_root / ASSETS[kind], settings, history, test)
        f32 = measure_folder(folder, None, splits)
        i8 = measure_folder(folder, "int8", splits)
        results["models"][kind] = {
            "asset": ASSETS[kind], "architecture": model.architecture, "config": dict(
                RESNET_CONFIG if kind == "resnet" else VIT_CONFIG),
            "parameters": model.num_parameters(), "settings": settings.as_dict(), "steps": settings.steps,
            "train_s": round(train_s, 2), "best_step": history["best_step"],
            "validation": {k: validation[k] for k in ("accuracy", "loss")},
            "test": {k: test[k] for k in ("accuracy", "loss", "confusion_matrix", "misclassified", "predicted")},
            "float32": {"test_accuracy": f32["accuracy"], "weight_bytes": f32["weight_bytes"],
                        "file_bytes": (folder / "model.safetensors").stat().st_size},
            "int8": {"test_accuracy": i8["accuracy"], "weight_bytes": i8["weight_bytes"],
                     "bytes_ratio": round(i8["weight_bytes"] / f32["weight_bytes"], 4),
                     "max_abs_logit_diff": float((i8["test_logits"] - f32["test_logits"]).abs().max()),
                     "prediction_agreement": float((i8["test_logits"].argmax(-1)
                                                    == f32["test_logits"].argmax(-1)).float().mean()),
                     "misclassified": i8["misclassified"]},
        }
    results["wall_s"] = round(time.perf_counter() - started, 2)
    return check_results(results)


# --------------------------------------------------------------------------------------
# results.json: layout check

_LAYOUT = ResultsLayout(COMMAND)
_key, _fraction = _LAYOUT.key, _LAYOUT.fraction  # (obj, key, path[, kind]): obj[key], checked


def check_results(results: dict) -> dict:
    """Check that ``results`` has the layout README.md documents; returns it, or raises ``ResultsError``.

    Keys, types, ranges; confusion matrices 10 x 10 counting the test split; misclassified
    indices inside the split and consistent with the accuracy; the data's hashes the code's.
    """
    if not isinstance(results, dict):
        raise ResultsError("results.json must hold a JSON object")
    if _key(results, "schema_version", "(top level)", int) != SCHEMA_VERSION:
        raise ResultsError(f"results.json has schema_version {results['schema_version']}, this code reads "
                           f"{SCHEMA_VERSION}: rerun `{COMMAND}`")
    for key in ("command", "date"):
        _key(results, key, "(top level)", str)
    _key(results, "wall_s", "(top level)", float)
    env = _key(results, "environment", "(top level)", dict)
    for key in ("torch", "python", "platform", "cpu"):
        _key(env, key, "environment", str)
    for key in ("cpu_count", "threads"):
        _key(env, key, "environment", int)
    data = _key(results, "data", "(top level)", dict)
    if _key(data, "sha256", "data", str) != image_data.DIGITS_SHA256 or \
            _key(data, "split_sha256", "data", dict) != image_data.SPLIT_SHA256:
        raise ResultsError(f"results.json was measured on other data or another split (data.sha256 / "
                           f"data.split_sha256 differ from course_lib.image_data's): rerun `{COMMAND}`")
    sizes = _key(data, "sizes", "data", dict)
    n_test = _key(sizes, "test", "data.sizes", int)
    if len(_key(data, "test_indices", "data", list)) != n_test:
        raise ResultsError(f"results.json: data.test_indices should list the {n_test} test digits")
    _key(data, "preprocessor", "data", dict)
    models = _key(results, "models", "(top level)", dict)
    if sorted(models) != sorted(MODELS):
        raise ResultsError(f"results.json: models should be {list(MODELS)}, got {sorted(models)}")
    for kind, info in models.items():
        path = f"models.{kind}"
        for key in ("asset", "architecture"):
            _key(info, key, path, str)
        _key(info, "config", path, dict)
        _key(info, "settings", path, dict)
        for key in ("parameters", "steps", "best_step"):
            _key(info, key, path, int)
        _key(info, "train_s", path, float)
        _fraction(_key(info, "validation", path, dict), "accuracy", f"{path}.validation")
        test = _key(info, "test", path, dict)
        accuracy = _fraction(test, "accuracy", f"{path}.test")
        _key(test, "loss", f"{path}.test", float)
        matrix = _key(test, "confusion_matrix", f"{path}.test", list)
        if len(matrix) != NUM_CLASSES or any(not isinstance(r, list) or len(r) != NUM_CLASSES
                                             or any(not isinstance(c, int) or c < 0 for c in r) for r in matrix):
            raise ResultsError(f"results.json: {path}.test.confusion_matrix should be a 10 x 10 list of counts")
        if sum(map(sum, matrix)) != n_test:
            raise ResultsError(f"results.json: {path}.test.confusion_matrix counts {sum(map(sum, matrix))} digits, "
                               f"the test split has {n_test}")
        correct = sum(matrix[i][i] for i in range(NUM_CLASSES))
        wrong = _key(test, "misclassified", f"{path}.test", list)
        if len(wrong) != n_test - correct or len(_key(test, "predicted", f"{path}.test", list)) != len(wrong) or \
                any(not isinstance(i, int) or not 0 <= i < n_test for i in wrong):
            raise ResultsError(f"results.json: {path}.test.misclassified should list the {n_test - correct} test "
                               f"positions (0..{n_test - 1}) the confusion matrix counts as wrong")
        if abs(accuracy - correct / n_test) > 1e-9:
            raise ResultsError(f"results.json: {path}.test.accuracy {accuracy} disagrees with its confusion matrix")
        f32 = _key(info, "float32", path, dict)
        i8 = _key(info, "int8", path, dict)
        for variant, name in ((f32, "float32"), (i8, "int8")):
            _fraction(variant, "test_accuracy", f"{path}.{name}")
            _key(variant, "weight_bytes", f"{path}.{name}", int)
        _key(f32, "file_bytes", f"{path}.float32", int)
        _fraction(i8, "prediction_agreement", f"{path}.int8")
        _fraction(i8, "bytes_ratio", f"{path}.int8")
        _key(i8, "max_abs_logit_diff", f"{path}.int8", float)
        _key(i8, "misclassified", f"{path}.int8", list)
    return results


def results_path() -> Path:
    from course_lib.assets import asset_path

    return asset_path(RESULTS_ASSET) / "results.json"


def read_results(path: str | os.PathLike | None = None) -> dict:
    """The shipped ``results.json`` (or ``path``), checked by ``check_results``."""
    path = Path(path) if path is not None else results_path()
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"cannot read {path} ({err}); restore it (git checkout) or rerun `{COMMAND}`") from err
    return check_results(results)


def results_table(results: dict | None = None) -> str:
    """A printable table: parameters, test accuracy float32 / int8, weight bytes float32 / int8, per model."""
    results = results if results is not None else read_results()
    lines = [f"{'model':<8} {'params':>8} {'val acc':>8} {'test f32':>9} {'test int8':>9} {'KB f32':>8} "
             f"{'KB int8':>8} {'train s':>8}"]
    for kind, m in results["models"].items():
        lines.append(f"{kind:<8} {m['parameters']:>8,} {100 * m['validation']['accuracy']:>7.2f}% "
                     f"{100 * m['float32']['test_accuracy']:>8.2f}% {100 * m['int8']['test_accuracy']:>8.2f}% "
                     f"{m['float32']['weight_bytes'] / 1024:>8.1f} {m['int8']['weight_bytes'] / 1024:>8.1f} "
                     f"{m['train_s']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Train the course's digit ResNet and ViT, save them "
                                     "as assets and measure float32 vs int8 (results.json).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2; 1 when other programs "
                                                               "keep the cores busy: oversubscribed threads run "
                                                               "several times slower)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", metavar="DIR", help="write the three asset folders under DIR instead of "
                                                     "course_lib/assets/")
    args = parser.parse_args(argv)
    out_root = Path(args.out) if args.out else None
    results = run(args.threads, progress=not args.quiet, out_root=out_root)
    from course_lib.assets import HERE

    folder = (out_root or HERE) / RESULTS_ASSET
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(results_table(results))
    print(f"wrote {folder / 'results.json'} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
