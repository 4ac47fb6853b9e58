"""Numbers that say how close, how good, how fast: the course's measurements.

``compare`` is what notebooks use to show parity with a reference implementation. It prints
the tolerance that holds, not the raw difference: the last bits of a float32 result vary
between CPUs (vector widths, summation order), and notebooks must print the same text on
every machine.
"""

from __future__ import annotations

from typing import Any


def to_numpy(x: Any):
    """A NumPy array from a torch tensor (any device or dtype, bfloat16 too), the course's
    teaching Tensor (anything with ``.numpy()``), a number or nested lists. Never imports torch."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()  # NumPy has no bfloat16
    if callable(getattr(x, "numpy", None)):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _as_float64(x: Any):
    return to_numpy(x).astype("float64")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute element-wise difference between two arrays/tensors of one shape."""
    a64, b64 = _as_float64(a), _as_float64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    return float(abs(a64 - b64).max()) if a64.size else 0.0


def compare(label: str, ours: Any, reference: Any, atol: float = 1e-6) -> None:
    """Print ``label: max |Δ| ≤ atol ✓`` when ``ours`` matches ``reference`` within ``atol``;
    raise AssertionError (with the actual difference) when it does not.

    Returns nothing, so a notebook cell ending with it shows only the printed line
    (``max_abs_diff`` gives the number)."""
    diff = max_abs_diff(ours, reference)
    if not diff <= atol:  # also catches NaN
        raise AssertionError(f"{label}: max |Δ| = {diff:.3g} exceeds the tolerance {atol:g}")
    print(f"{label}: max |Δ| ≤ {atol:g} ✓")


# --------------------------------------------------------------------------------------
# Language-model quality: cross-entropy and perplexity on a token stream

def next_token_loss(model, token_ids: Any, block_size: int = 256, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on a 1-D stream of token ids.

    The stream (N,) is cut into non-overlapping blocks of ``block_size`` inputs; each
    block's targets are the same tokens shifted by one, so every token after the first is
    predicted exactly once (the last block may be shorter). ``model(ids)`` takes ids
    (B, T) int64 and returns logits (B, T, V). The model runs in eval mode (no dropout)
    under ``torch.inference_mode``; its training mode is restored afterwards. The mean is
    over all N - 1 predicted tokens, accumulated in float64.

    A token early in a block sees little context, so shorter blocks give a higher loss:
    compare models at the same ``block_size`` (at most the model's ``n_positions``).
    """
    import torch
    import torch.nn.functional as F

    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise ValueError(f"need at least 2 tokens to predict one, got {ids.numel()}")
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}")
    device = next(model.parameters()).device
    inputs, targets = ids[:-1], ids[1:]  # (N - 1,): the token at i predicts the token at i + 1
    n_full = inputs.numel() // block_size
    full_x = inputs[:n_full * block_size].view(n_full, block_size)  # (n_full, block_size)
    full_y = targets[:n_full * block_size].view(n_full, block_size)
    batches = [(full_x[i:i + batch_size], full_y[i:i + batch_size]) for i in range(0, n_full, batch_size)]
    if inputs.numel() > n_full * block_size:  # the shorter last block
        batches.append((inputs[n_full * block_size:].unsqueeze(0), targets[n_full * block_size:].unsqueeze(0)))

    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.inference_mode():
            for x, y in batches:
                logits = model(x.to(device))  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum")
                total += float(loss.double())
    finally:
        model.train(was_training)
    return total / targets.numel()


def perplexity(model, token_ids: Any, block_size: int = 256, batch_size: int = 8) -> float:
    """``exp`` of ``next_token_loss``: the model is, on average, as unsure as a fair choice
    among this many tokens. 1 is perfect; a uniform guess over V tokens scores V.

    ``token_ids``: a 1-D stream (list, NumPy array or tensor) of N >= 2 ids;
    ``model(ids)`` (B, T) -> logits (B, T, V). See ``next_token_loss`` for the blocks.
    """
    import math

    return math.exp(next_token_loss(model, token_ids, block_size=block_size, batch_size=batch_size))


def unigram_perplexity(train_ids: Any, eval_ids: Any, vocab_size: int, smoothing: float = 1.0) -> float:
    """The perplexity on ``eval_ids`` of a model that ignores context: each token's
    probability is its frequency in ``train_ids`` (plus ``smoothing`` for every token of
    the vocabulary, so an unseen token is not impossible). The baseline any language
    model must beat: everything below it comes from using the context.
    """
    import numpy as np

    train = np.asarray(to_numpy(train_ids), dtype=np.int64).ravel()
    evaluated = np.asarray(to_numpy(eval_ids), dtype=np.int64).ravel()
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + smoothing
    log_probs = np.log(counts / counts.sum())
    return float(np.exp(-log_probs[evaluated].mean()))


# --------------------------------------------------------------------------------------
# Agreement with a reference model: same predictions, same directions

def top1_agreement(logits: Any, reference_logits: Any) -> float:
    """The fraction of positions where ``logits`` and ``reference_logits`` (same shape
    (..., V)) pick the same top token (argmax over the last axis): 1.0 means every greedy
    choice is unchanged. Chapter 07 compares a quantized model with its float32 original.
    """
    import torch

    a, b = torch.as_tensor(to_numpy(logits)), torch.as_tensor(to_numpy(reference_logits))
    if a.shape != b.shape:
        raise ValueError(f"logits have shape {tuple(a.shape)}, the reference {tuple(b.shape)}: they must match")
    if a.dim() == 0 or a.shape[-1] == 0 or a.numel() == 0:
        raise ValueError(f"need logits of shape (..., V) with V >= 1 and at least one position, got {tuple(a.shape)}")
    return float((a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean())


def cosine_similarity_rows(a: Any, b: Any, eps: float = 1e-12):
    """Row-wise cosine similarity: (..., C), (..., C) -> (...,) float64 tensor, ``a·b / (|a| |b|)``.

    1 = same direction. Works on embeddings normalised or not (``sentence_embeddings``
    normalises, so there a dot product already is the cosine); a zero row gives 0.
    """
    import torch

    a64, b64 = torch.as_tensor(_as_float64(a)), torch.as_tensor(_as_float64(b))
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    norms = a64.norm(dim=-1) * b64.norm(dim=-1)
    return (a64 * b64).sum(dim=-1) / norms.clamp_min(eps)


# --------------------------------------------------------------------------------------
# Process memory of loading a model, measured in a fresh process

_LOAD_PROBE = r"""
import json, sys, time

def status_mb(field):  # from /proc/self/status (Linux); kB -> MB
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(field)

def rss_mb():  # (now, peak so far)
    try:
        return status_mb("VmRSS"), status_mb("VmHWM")
    except (OSError, KeyError):
        pass
    try:
        import resource  # macOS, BSD: only the peak; ru_maxrss is in bytes on macOS, kB elsewhere
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
        return peak, peak
    except ImportError:
        import psutil  # Windows
        info = psutil.Process().memory_info()
        return info.rss / 1e6, getattr(info, "peak_wset", info.rss) / 1e6

args = json.loads(sys.argv[1])
import torch
import course_lib.loading, course_lib.quantization, course_lib.models  # everything imported before the baseline
torch.set_num_threads(args["threads"])
baseline, _ = rss_mb()
try:  # Linux: reset the peak to the current size, so that nothing before this line counts
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
start = time.perf_counter()
model = course_lib.loading.load_model(args["src"], task=args["task"], dtype=args["dtype"], quantize=args["quantize"],
                                     fast=args["fast"])
load_s = time.perf_counter() - start
if args["forward"]:
    with torch.inference_mode():
        model(torch.arange(1, 9).unsqueeze(0))  # (1, 8): every weight is read once
_, peak = rss_mb()
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "increase_mb": peak - baseline,
                  "model_mb": course_lib.quantization.model_nbytes(model) / 1e6, "load_s": load_s}))
"""


def load_peak_memory(src: Any, quantize: str | None = None, dtype: Any = None, forward: bool = True, *,
                     task: str = "auto", threads: int = 2, timeout: float = 300.0, fast: bool = True) -> dict[str, float]:
    """How much process memory ``course_lib.load_model(src, quantize=..., dtype=...)`` needs, at its peak.

    Returns a dict of megabytes (10^6 bytes):

    - ``baseline_mb``: resident memory after importing torch and course_lib, before loading;
    - ``peak_mb``: the process's peak resident memory (Linux ``VmHWM``) after loading and,
      with ``forward=True``, one forward pass;
    - ``increase_mb``: ``peak_mb - baseline_mb``, what loading (and using) the model cost;
    - ``model_mb``: the model's parameter and buffer bytes (``quantization.model_nbytes``);
    - ``load_s``: seconds the ``load_model`` call took.

    **Why a fresh process.** A peak can only go up: once this process (a notebook kernel,
    say) has held a float32 model, its peak stays there, and memory freed by Python is not
    always returned to the system. So each measurement runs ``sys.executable`` anew, which
    imports torch and course_lib, notes the baseline, loads, and reports; nothing else in
    that process can blur the number. Offline (``HF_HUB_OFFLINE=1``): ``src`` must be a
    folder, an asset name, or a Hub id already in the cache.

    **Why a forward pass.** A float32 checkpoint is memory-mapped: ``load_model`` returns at
    once and the operating system reads each page of the file only when a weight is first
    used. Without using the model, its float32 weights would look almost free. One forward
    pass on 8 token ids reads every weight, so every byte the model needs is resident and
    the comparison with a quantized model (whose integers were computed, so are really in
    memory) is fair. ``forward=False`` measures the load alone.

    On Linux the numbers come from ``/proc/self/status`` (the peak is reset to the current
    size once the imports are done, so only the load counts); elsewhere from ``resource``
    (peak only, so the baseline is the peak after the imports) or ``psutil`` on Windows.
    ``fast``: passed to ``load_model`` (its default path, or ``False``: chapter 02's layers).
    Takes a few seconds for a small model (mostly importing torch).
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if hasattr(dtype, "is_floating_point"):  # a torch.dtype -> its name, which load_model also accepts
        dtype = str(dtype).removeprefix("torch.")
    args = {"src": str(src), "quantize": None if quantize is None else str(quantize),
            "dtype": None if dtype is None else str(dtype), "forward": bool(forward), "task": task,
            "threads": int(threads), "fast": bool(fast)}
    package_parent = str(Path(__file__).resolve().parent.parent)  # so the child imports this same course_lib
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))
    try:
        done = subprocess.run([sys.executable, "-c", _LOAD_PROBE, json.dumps(args)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"load_peak_memory({src!r}, quantize={quantize!r}, dtype={dtype!r}) took more than "
                           f"{timeout:g} s in its fresh process") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"load_peak_memory({src!r}, quantize={quantize!r}, dtype={dtype!r}): the fresh process "
                           f"failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Classification: accuracy, confusion matrix, precision / recall / F1 (chapter 08)
#
# Labels are integer class ids 0..K-1. Conventions follow scikit-learn (the reference the
# tests compare with when it is installed): the confusion matrix has true classes as rows
# and predicted classes as columns; F1 = 2·TP / (2·TP + FP + FN), which equals the harmonic
# mean of precision and recall whenever both are defined.

def _class_ids(y_true: Any, y_pred: Any, num_classes: int | None):
    """Both label arrays as int64 NumPy vectors of one length, and the number of classes K."""
    import numpy as np

    true, pred = to_numpy(y_true), to_numpy(y_pred)
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(f"labels must be 1-D vectors of class ids, got shapes {true.shape} (y_true) and "
                         f"{pred.shape} (y_pred): take the argmax of logits (B, K) first")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.shape[0]} labels and y_pred {pred.shape[0]}: they must be the same "
                         f"examples, one label each")
    if true.size == 0:
        raise ValueError("no labels: a score of an empty set is undefined")
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}: take the argmax of "
                             f"logits or probabilities first")
    true, pred = true.astype(np.int64), pred.astype(np.int64)
    largest = int(max(true.max(), pred.max()))
    if num_classes is None:
        num_classes = largest + 1
    smallest = int(min(true.min(), pred.min()))
    if smallest < 0 or largest >= num_classes:
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (num_classes={num_classes}), found "
                         f"{smallest if smallest < 0 else largest}: map labels to ids 0..K-1 (e.g. with label2id) "
                         f"or pass the right num_classes")
    return true, pred, int(num_classes)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """The fraction of examples whose predicted class id equals the true one.

    ``y_true``, ``y_pred``: (N,) integer class ids (lists, NumPy arrays or tensors), N >= 1.
    """
    true, pred, _ = _class_ids(y_true, y_pred, None)
    return float((true == pred).mean())


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None):
    """(K, K) int64 NumPy array: entry [i, j] counts examples of true class i predicted as j.

    Rows are true classes, columns predicted ones (scikit-learn's convention), so the
    diagonal holds the correct predictions, row sums the class sizes (support) and column
    sums how often each class was predicted. ``num_classes`` K defaults to the largest id
    seen + 1; pass it so a class that never occurs still gets its row and column.
    """
    import numpy as np

    true, pred, k = _class_ids(y_true, y_pred, num_classes)
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def precision_recall_f1(y_true: Any, y_pred: Any, num_classes: int | None = None,
                        zero_division: float = 0.0) -> dict[str, Any]:
    """Per-class precision, recall and F1 from the confusion matrix, as (K,) float64 arrays.

    For class c, with TP/FP/FN its true positives, false positives, false negatives:

    - precision = TP / (TP + FP): of the examples predicted c, how many are c;
    - recall    = TP / (TP + FN): of the examples that are c, how many were found;
    - F1        = 2·TP / (2·TP + FP + FN), the harmonic mean of the two.

    **Zero division.** A class never predicted has no precision (0/0); a class absent from
    ``y_true`` has no recall; a class in neither has no F1. Each undefined value is
    ``zero_division`` (default 0.0, as scikit-learn; 1.0 and NaN are other common choices).
    F1 is only undefined when the class is in neither: a class that is present but never
    predicted gets F1 = 0 (it was missed every time), whatever ``zero_division`` is.

    Returns ``{"precision", "recall", "f1"}`` (K,) float64 arrays and ``"support"`` (K,) int64
    (examples of each class in ``y_true``).
    """
    import numpy as np

    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)  # (K,): TP + FP, TP + FN

    def divide(num, den):
        out = np.full_like(num, float(zero_division))
        np.divide(num, den, out=out, where=den > 0)
        return out

    return {"precision": divide(tp, predicted), "recall": divide(tp, actual),
            "f1": divide(2 * tp, predicted + actual), "support": actual.astype(np.int64)}


def macro_f1(y_true: Any, y_pred: Any, num_classes: int | None = None, zero_division: float = 0.0) -> float:
    """The mean of the per-class F1 scores, every class weighing the same however rare.

    On imbalanced data it exposes what accuracy hides: always answering the majority class
    of an 87 % / 13 % set scores 0.87 accuracy but a macro-F1 of about 0.47 (F1 0.93 for the
    majority, 0 for the minority). ``num_classes`` and ``zero_division``: see
    ``precision_recall_f1``; a class in neither vector counts as ``zero_division``.
    """
    return float(precision_recall_f1(y_true, y_pred, num_classes, zero_division)["f1"].mean())


def classification_report(y_true: Any, y_pred: Any, id2label: dict[int, str] | None = None,
                          digits: int = 3) -> str:
    """A printable table: precision, recall, F1 and support per class, then accuracy and macro-F1.

    ``id2label`` names the rows ({0: "ham", 1: "spam"}); its size fixes the number of
    classes. Rounded to ``digits`` so a notebook prints the same text on every machine.
    """
    k = len(id2label) if id2label else None
    scores = precision_recall_f1(y_true, y_pred, num_classes=k)
    names = [str(id2label[i] if i in id2label else id2label[str(i)]) if id2label else str(i)  # JSON keys are str
             for i in range(len(scores["f1"]))]
    width = max(len("macro-F1"), *(len(n) for n in names))
    lines = [f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'F1':>9}  {'support':>7}"]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  {scores['precision'][i]:>9.{digits}f}  {scores['recall'][i]:>9.{digits}f}  "
                     f"{scores['f1'][i]:>9.{digits}f}  {int(scores['support'][i]):>7d}")
    n = int(scores["support"].sum())
    lines.append(f"{'accuracy':<{width}}  {'':>9}  {'':>9}  {accuracy(y_true, y_pred):>9.{digits}f}  {n:>7d}")
    lines.append(f"{'macro-F1':<{width}}  {'':>9}  {'':>9}  {float(scores['f1'].mean()):>9.{digits}f}  {n:>7d}")
    return "\n".join(lines)
