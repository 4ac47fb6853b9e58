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
