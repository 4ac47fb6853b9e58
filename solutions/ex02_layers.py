"""Chapter 02 exercises: the layers of a transformer, from primitive tensor operations.

Every function takes and returns ``torch.Tensor`` s. Build each one from primitive ops —
``@``/``matmul``, ``+ - * /``, ``.mean``, ``.sum``, ``.amax``, ``.exp``, ``torch.sqrt``,
``torch.tanh``, ``torch.where``, ``.masked_fill``, ``torch.arange``, ``.view``/``.reshape``,
``.transpose`` — NOT from the ready-made ``torch.nn.functional`` versions (``F.linear``,
``F.layer_norm``, ``F.rms_norm``, ``F.gelu``, ``F.softmax``/``torch.softmax``,
``F.scaled_dot_product_attention``): the grader switches those off while it runs your code,
and tells you if you called one.

Write the body of each function below, replacing ``raise NotImplementedError``. Then grade:

* in the notebook ``notebooks/02_layers.ipynb``: ``check("ex02.layer_norm")`` (each
  exercise has its cell, in the section that explains it) — grading runs in a fresh
  process, so save this file and run the cell again; each further failure shows the next
  hint, ``check("ex02.layer_norm", hint=2)`` asks for hint 2 now;
* in a terminal: ``python -m course_lib.grade ex02`` (all) or ``python -m course_lib.grade
  ex02.attention`` (one).

The checks call your functions on random inputs of random shapes and compare with
``course_lib.layers`` (and so with ``torch.nn``), within 1e-5. The last two functions,
``rms_norm`` and ``alibi_bias``, are stretch exercises: they go past what the chapter shows.
"""

from __future__ import annotations

import math

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer: ``y = x Wᵀ + b``, for every vector along the last dimension of ``x``.

    ``x``: (..., in_features) — any number of leading dimensions (batch, tokens, ...);
    ``weight``: (out_features, in_features) — PyTorch and Hugging Face store it this way
    round, so row ``i`` holds the weights of output ``i``; ``bias``: (out_features,) or
    ``None`` (no bias). Returns (..., out_features).

    Example: ``x`` of shape (2, 5, 4), ``weight`` (3, 4), ``bias`` (3,) -> (2, 5, 3); output
    ``y[b, t, i]`` is the dot product of ``x[b, t]`` with ``weight[i]``, plus ``bias[i]``.
    """
    out = x @ weight.T
    if bias is not None:
        out = out + bias
    return out


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Layer normalisation over the last dimension.

    ``x``: (..., d); ``weight``, ``bias``: (d,); returns (..., d).
    For each vector along the last dimension, with its mean μ and variance σ²:
    ``(x − μ) / √(σ² + eps) · weight + bias``. The variance is the *biased* one (divide by
    ``d``, not ``d − 1``), as ``torch.nn.LayerNorm`` uses; ``eps`` keeps a vector whose
    values are all equal (σ² = 0) finite. Do not change ``x``.

    Example: the row ``[1., 2., 3.]`` with weight 1 and bias 0 gives about
    ``[-1.2247, 0., 1.2247]`` (μ = 2, σ² = 2/3).
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, the tanh approximation that GPT-2 uses (``F.gelu(x, approximate="tanh")``).

    Element-wise, any shape: GELU(x) ≈ ½ · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))).

    Examples: 0 -> 0; 1 -> about 0.8412; −1 -> about −0.1588; large x -> x; very
    negative x -> 0.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def stable_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension that never overflows and handles fully masked rows.

    ``scores``: (..., n), float; masked positions hold ``-inf``. Returns the same shape,
    each row ``p_i = exp(s_i) / Σ_j exp(s_j)``, computed so that large scores do not overflow
    (``exp(1000.)`` is ``inf`` in float32). A row that is *all* ``-inf`` (a query that may
    attend nowhere, e.g. a padding position) must come out as all zeros — ``torch.softmax``
    gives NaN there. Do not change ``scores``.

    Example: ``stable_softmax(torch.tensor([[1000., 1000.], [-inf, -inf]]))`` is
    ``[[0.5, 0.5], [0., 0.]]``.

    Idea: the result does not change if you subtract the same number from every score of a
    row.
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    e = torch.exp(scores - row_max)
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def causal_mask(t_query: int, t_key: int) -> torch.Tensor:
    """Which keys each query may attend to in a decoder: a bool tensor (t_query, t_key).

    ``True`` means "may attend". The queries are the *last* ``t_query`` positions of a
    sequence of ``t_key`` positions (with a KV cache the keys include earlier tokens), so
    query ``i`` sits at absolute position ``i + t_key - t_query`` and may attend to every key
    ``j`` at or before it, never to a later one.

    Examples: ``causal_mask(3, 3)`` is lower-triangular, the diagonal included;
    ``causal_mask(1, 4)`` is ``[[True, True, True, True]]`` (one new token sees everything);
    ``causal_mask(2, 4)`` is ``[[True, True, True, False], [True, True, True, True]]``.
    """
    query_pos = torch.arange(t_query).unsqueeze(1) + (t_key - t_query)  # (t_query, 1)
    key_pos = torch.arange(t_key).unsqueeze(0)  # (1, t_key)
    return key_pos <= query_pos


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    ``q``: (B, H, Tq, D); ``k``, ``v``: (B, H, Tk, D); ``mask``: ``None`` or a bool tensor
    that broadcasts to (B, H, Tq, Tk), ``True`` = may attend.
    Returns (B, H, Tq, D): ``softmax(Q Kᵀ / √D) V``, where a masked-out key gets the score
    ``-inf`` before the softmax (weight 0), and a query with no allowed key gets an output of
    zeros. Your ``stable_softmax`` above does the softmax (call it: it is in this file).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return stable_softmax(scores) @ v


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Split the hidden dimension into heads: (B, T, n_heads * D) -> (B, n_heads, T, D).

    Head ``h`` gets the hidden features ``h*D`` to ``(h+1)*D - 1`` of every token (the layout
    Hugging Face checkpoints use). No data needs copying: return a view. Raise
    ``ValueError`` if the hidden size is not divisible by ``n_heads``.

    Example: ``x = torch.arange(12.).view(1, 2, 6)`` (2 tokens, 6 features) with
    ``n_heads=2`` gives head 0 ``[[0, 1, 2], [6, 7, 8]]`` and head 1
    ``[[3, 4, 5], [9, 10, 11]]``, shape (1, 2, 2, 3).
    """
    batch, seq, hidden = x.shape
    if hidden % n_heads:
        raise ValueError(f"hidden size {hidden} is not divisible by n_heads={n_heads}")
    return x.view(batch, seq, n_heads, hidden // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Undo ``split_heads``: (B, n_heads, T, D) -> (B, T, n_heads * D).

    Token ``t``'s output is head 0's D features, then head 1's, and so on. ``x`` is usually
    the (non-contiguous) result of ``split_heads`` or of attention on it.
    """
    batch, heads, seq, dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * dim)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Stretch: RMSNorm (Llama, T5, Mistral) over the last dimension.

    ``x``: (..., d); ``weight``: (d,); returns (..., d). Each vector along the last
    dimension is divided by its root mean square, then scaled by ``weight``:
    ``x / √(mean(x²) + eps) · weight``. Unlike LayerNorm, no mean is subtracted and there is
    no bias. Same result as ``torch.nn.functional.rms_norm(x, (d,), weight, eps)`` (switched
    off while the grader runs your code). Do not change ``x``.

    Example: the row ``[3., 4.]`` (mean square 12.5) with weight 1 and a tiny eps gives
    about ``[0.8485, 1.1314]``.
    """
    mean_square = (x ** 2).mean(dim=-1, keepdim=True)
    return x / torch.sqrt(mean_square + eps) * weight


def alibi_bias(n_heads: int, t_query: int, t_key: int) -> torch.Tensor:
    """Stretch: ALiBi, the linear biases that replace position embeddings in BLOOM and MPT.

    Returns a float tensor (n_heads, t_query, t_key): ``bias[h, i, j] = m_h · (j − p_i)``,
    added to head ``h``'s attention scores. ``p_i = i + t_key − t_query`` is query ``i``'s
    absolute position (the queries are the last positions, as in ``causal_mask``), so
    the bias is 0 for the query's own position and falls linearly for keys further back
    (keys after the query get positive values; a causal mask hides them anyway).

    The slopes ``m_h`` are a geometric sequence. For ``n_heads`` a power of two ``n``:
    ``m_h = 2^(−8(h+1)/n)``, h = 0 … n−1. Otherwise, with ``n0`` the largest power of two
    below ``n_heads``: the ``n0`` slopes for ``n0`` heads, followed by the slopes of ``2·n0``
    heads at odd steps, ``2^(−8·1/(2·n0))``, ``2^(−8·3/(2·n0))``, ``2^(−8·5/(2·n0))``, …, until
    there are ``n_heads``.

    Examples: 4 heads -> slopes 1/4, 1/16, 1/64, 1/256; 6 heads -> the same four, then
    2^(−1) and 2^(−3). ``alibi_bias(1, 2, 3)`` with slope 2^(−8) is
    ``[[[−2^(−8), 0, 2^(−8)], [−2·2^(−8), −2^(−8), 0]]]``.
    """
    n0 = 2 ** int(math.log2(n_heads))
    slopes = [2.0 ** (-8.0 * (h + 1) / n0) for h in range(n0)]
    slopes += [2.0 ** (-8.0 * (2 * h + 1) / (2 * n0)) for h in range(n_heads - n0)]
    positions = torch.arange(t_query).unsqueeze(1) + (t_key - t_query)  # (t_query, 1)
    offsets = torch.arange(t_key).unsqueeze(0) - positions  # (t_query, t_key)
    return torch.tensor(slopes).view(n_heads, 1, 1) * offsets
