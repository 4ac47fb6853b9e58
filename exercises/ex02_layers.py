"""Chapter 02 exercises: the layers of a transformer, from primitive tensor operations.

Every function takes and returns ``torch.Tensor`` s. Build each one from primitive ops —
``@``/``matmul``, ``+ - * /``, ``.mean``, ``.sum``, ``.amax``, ``.exp``, ``torch.tanh``,
``torch.erf``, ``.masked_fill``, ``.view``/``.reshape``, ``.transpose`` — NOT from the
ready-made ``torch.nn.functional`` versions (``F.linear``, ``F.layer_norm``, ``F.gelu``,
``F.softmax``/``torch.softmax``, ``F.scaled_dot_product_attention``): the grader switches
those off while it runs your code, and tells you if you called one.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/02_layers.ipynb``: ``check("ex02.layer_norm")`` (one cell per
  exercise) — grading runs in a fresh process, so save this file and run the cell again;
* in a terminal: ``python -m course_lib.grade ex02`` (all) or ``python -m course_lib.grade
  ex02.attention`` (one).

The checks call your functions on random inputs of random shapes and compare with
``course_lib.layers`` (and so with ``torch.nn``), within 1e-5.
"""

from __future__ import annotations

import math

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer: ``x @ weight.T + bias``.

    ``x``: (..., in_features) — any number of leading dimensions;
    ``weight``: (out_features, in_features) — PyTorch and Hugging Face store it this way
    round; ``bias``: (out_features,) or ``None`` (no bias).
    Returns (..., out_features).

    Hint: ``weight.T`` is a view (no copy); ``@`` broadcasts over the leading dimensions.
    """
    raise NotImplementedError


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer normalisation over the last dimension.

    ``x``: (..., d); ``weight``, ``bias``: (d,); returns (..., d).
    For each vector along the last dimension: subtract its mean, divide by
    ``sqrt(variance + eps)``, then scale by ``weight`` and shift by ``bias``.
    Use the *biased* variance (divide by ``d``, not ``d - 1``), as ``torch.nn.LayerNorm`` does.

    Hint: ``x.mean(dim=-1, keepdim=True)`` keeps the dimension so the subtraction broadcasts.
    """
    raise NotImplementedError


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, the tanh approximation that GPT-2 uses (``F.gelu(x, approximate="tanh")``).

    ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``, element-wise; any shape.

    Hint: ``math.sqrt(2 / math.pi)`` is a Python float; ``torch.tanh`` works element-wise.
    """
    raise NotImplementedError


def stable_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension that never overflows and handles fully masked rows.

    ``scores``: (..., n), float; masked positions hold ``-inf``. Returns the same shape:
    each row is ``exp(s - max) / sum(exp(s - max))``. Subtracting the row's maximum changes
    nothing mathematically but keeps ``exp`` from overflowing (``exp(1000.)`` is ``inf``).
    A row that is *all* ``-inf`` (a query that may attend nowhere, e.g. a padding position)
    must come out as all zeros — ``torch.softmax`` gives NaN there.

    Example: ``stable_softmax(torch.tensor([[1000., 1000.], [-inf, -inf]]))`` is
    ``[[0.5, 0.5], [0., 0.]]``.

    Hint: for an all ``-inf`` row the max is ``-inf`` too; replace such a max by 0 before
    subtracting (``torch.where``), then divide by the sum only where it is > 0.
    """
    raise NotImplementedError


def causal_mask(t_query: int, t_key: int) -> torch.Tensor:
    """Which keys each query may attend to in a decoder: a bool tensor (t_query, t_key).

    ``True`` means "may attend". The queries are the *last* ``t_query`` positions of a
    sequence of ``t_key`` positions (with a KV cache the keys include earlier tokens), so
    query ``i`` sits at absolute position ``i + t_key - t_query`` and may attend to every key
    ``j`` at or before it.

    Examples: ``causal_mask(3, 3)`` is lower-triangular (the diagonal included);
    ``causal_mask(1, 4)`` is ``[[True, True, True, True]]`` (one new token sees everything).

    Hint: compare ``torch.arange(t_key)`` (a row) with a column of the queries' positions.
    """
    raise NotImplementedError


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    ``q``: (B, H, Tq, D); ``k``, ``v``: (B, H, Tk, D); ``mask``: ``None`` or a bool tensor
    that broadcasts to (B, H, Tq, Tk), ``True`` = may attend.
    Returns (B, H, Tq, D): ``softmax(q @ k^T / sqrt(D), masked) @ v``. Masked scores become
    ``-inf`` before the softmax; a query with no allowed key gets an output of zeros.

    Hint: ``k.transpose(-2, -1)``; ``scores.masked_fill(~mask, float("-inf"))``; then the
    ``stable_softmax`` you wrote above (call it: it is in this file).
    """
    raise NotImplementedError


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Split the hidden dimension into heads: (B, T, n_heads * D) -> (B, n_heads, T, D).

    Head ``h`` gets the hidden features ``h*D`` to ``(h+1)*D - 1`` of every token (the layout
    Hugging Face checkpoints use). Raise ``ValueError`` if the hidden size is not divisible
    by ``n_heads``.

    Hint: ``view`` to (B, T, n_heads, D), then ``transpose`` T and the head dimension.
    """
    raise NotImplementedError


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Undo ``split_heads``: (B, n_heads, T, D) -> (B, T, n_heads * D).

    Hint: ``transpose`` back, then ``reshape`` (or ``.contiguous().view``): after a
    transpose the memory is no longer row-major, so a plain ``view`` fails.
    """
    raise NotImplementedError
