"""Chapter 02's layers: the building blocks of a transformer, from primitive tensor ops.

Each piece is written with matmul, mean, exp, max, erf, tanh, indexing and masked_fill —
never with the ready-made shortcut it mirrors — so a learner can read exactly what
happens. The reference for every piece is its ``torch.nn`` / ``torch.nn.functional``
counterpart (``nn.Linear``, ``nn.Embedding``, ``F.layer_norm``, ``F.gelu``, ``F.dropout``,
``torch.softmax``, ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, the
feed-forward part of ``nn.TransformerEncoderLayer``); ``tests/test_layers.py`` checks
each against it, values and gradients. The later chapters build BERT/RoBERTa and GPT-2
from these functions and modules, and chapter 08 trains them, so everything here works
with autograd and on any device and dtype of its input. At the end, two pieces of newer
models (RMSNorm, ALiBi), the references of chapter 02's stretch exercises, and the
primitives chapter 09's Llama-family decoder adds (SiLU, SwiGLU, ``repeat_kv`` for
grouped-query attention, the sliding-window mask).

Shape letters: B batch, T sequence length (Tq queries, Tk keys), H heads, D head size,
C = H * D model width.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

__all__ = [
    "linear", "Linear",
    "embedding", "Embedding",
    "layer_norm", "LayerNorm",
    "relu", "gelu", "gelu_tanh", "GELU", "ACTIVATIONS", "activation",
    "dropout", "Dropout",
    "softmax",
    "causal_mask", "padding_mask", "scaled_dot_product_attention",
    "split_heads", "merge_heads", "MultiHeadSelfAttention",
    "FeedForward",
    "rms_norm", "RMSNorm", "alibi_slopes", "alibi_bias",
    "silu", "swiglu", "repeat_kv", "sliding_window_mask",
]


# --------------------------------------------------------------------------------------
# Linear and Embedding

def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out,) -> (..., out).

    The weight is stored (out, in), as in ``torch.nn.Linear``, so checkpoints load as-is.
    """
    y = x @ weight.T  # (..., out)
    if bias is not None:
        y = y + bias  # broadcasts over every leading dimension
    return y


class Linear(nn.Module):
    """A learned affine map; parameters ``weight`` (out, in) and ``bias`` (out,) like ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:  # shapes only (a model about to be filled from a checkpoint): nothing to draw
            return
        # torch's init, draw for draw: the same seed gives the same weights as nn.Linear
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # = uniform(±1/sqrt(in))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Look up rows of ``weight``: ids (...) int64, weight (num, dim) -> (..., dim).

    A lookup is just indexing; it equals ``one_hot(ids) @ weight`` without the matmul.
    """
    return weight[ids]  # (..., dim)


class Embedding(nn.Module):
    """A table of ``num_embeddings`` learned vectors; parameter ``weight`` (num, dim) like ``nn.Embedding``.

    With ``padding_idx`` that row starts at zero and, as in torch, receives no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 *, device=None, dtype=None):
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx={padding_idx} is outside the table of {num_embeddings} rows")
            padding_idx %= num_embeddings  # -1 means the last row, as in torch
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:  # shapes only (a model about to be filled from a checkpoint): nothing to draw
            return
        nn.init.normal_(self.weight)  # N(0, 1), like torch
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = embedding(ids, self.weight)  # (..., dim)
        if self.padding_idx is not None and torch.is_grad_enabled():
            # same values, but padding positions send no gradient to their row (torch does
            # the same), so training never moves the padding vector away from zero
            is_pad = (ids == self.padding_idx).unsqueeze(-1)  # (..., 1)
            out = torch.where(is_pad, out.detach(), out)
        return out

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"


# --------------------------------------------------------------------------------------
# LayerNorm

def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Normalise over the last dimension, then scale and shift: x (..., C) -> (..., C).

    ``(x - mean) / sqrt(var + eps) * weight + bias`` with the *biased* variance (divide by
    C, not C - 1), as ``torch.nn.LayerNorm`` does. ``weight`` and ``bias`` are (C,) or None.

    float16 / bfloat16 inputs are computed in float32 and cast back to their dtype: torch's
    LayerNorm accumulates half types in float32 too, because a mean or variance summed over
    hundreds of features in 16 bits loses most of its precision.
    """
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    mean = x.mean(-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # (..., 1), biased
    x = (x - mean) / torch.sqrt(var + eps)  # (..., C), zero mean, unit variance
    if weight is not None:
        x = x * weight
    if bias is not None:
        x = x + bias
    return x.to(dtype)


class LayerNorm(nn.Module):
    """Layer normalisation over the last ``normalized_shape`` features; params ``weight``, ``bias``.

    Hugging Face checkpoints use these names (very old ones say ``gamma``/``beta``).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 *, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


# --------------------------------------------------------------------------------------
# Activations

def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` elementwise: keeps positives, zeros the rest (NaN stays NaN, like torch)."""
    return x.masked_fill(x <= 0, 0.0)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, ``x * Phi(x)`` with Phi the standard normal CDF: ``0.5 x (1 + erf(x / sqrt 2))``.

    BERT and RoBERTa use this one (``hidden_act="gelu"``).
    """
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    erf was slow on the hardware of the day; GPT-2's checkpoints were trained with this
    curve, so loading them needs it (``activation_function="gelu_new"``).
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class GELU(nn.Module):
    """GELU as a module: ``approximate="none"`` (exact, erf) or ``"tanh"`` (GPT-2), like ``nn.GELU``."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(x) if self.approximate == "tanh" else gelu(x)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


# The names Hugging Face configs use in ``hidden_act`` (BERT/RoBERTa) and
# ``activation_function`` (GPT-2).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a config names, e.g. ``activation("gelu_new") is gelu_tanh``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known names: {', '.join(sorted(ACTIVATIONS))}") from None


_activation = activation  # FeedForward's argument is also called `activation`


# --------------------------------------------------------------------------------------
# Dropout

def dropout(x: torch.Tensor, p: float, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    Scaling at training time keeps the expected value of every element unchanged, so at
    evaluation (``training=False``) dropout is simply the identity. ``p == 1`` gives zeros.
    Pass a seeded ``torch.Generator`` (on x's device) for a reproducible mask.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0  # 1/(1-p) would divide by zero; still connected to the graph
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p  # True with probability 1-p
    return x.masked_fill(~keep, 0.0) / (1.0 - p)


class Dropout(nn.Module):
    """Dropout as a module: active in ``train()`` mode, the identity after ``eval()``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------
# Softmax and attention

def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``: ``exp(x - max) / sum(exp(x - max))``.

    Subtracting the row maximum changes nothing mathematically but keeps ``exp`` from
    overflowing (``exp(1e4)`` is inf in float32; ``exp(0)`` is 1).

    A row that is entirely ``-inf`` (a fully masked row) gives all zeros. ``torch.softmax``
    gives NaN there (its max is -inf and ``-inf - -inf`` is NaN). Zeros is what attention
    wants: a padded query that may attend to nothing gets a zero output instead of NaNs
    that would spread through every later layer and the loss.
    """
    m = x.amax(dim, keepdim=True).detach()  # the shift cancels out, so no gradient through it
    m = m.masked_fill(m == float("-inf"), 0.0)  # fully masked row: shift by 0, every exp is 0
    e = torch.exp(x - m)
    s = e.sum(dim, keepdim=True)
    return e / s.masked_fill(s == 0, 1.0)  # 0 / 1 = 0 for fully masked rows


def causal_mask(t_query: int, t_key: int | None = None, device=None) -> torch.Tensor:
    """Bool (t_query, t_key) mask, True = may attend: no query sees a key from its future.

    Query i sits at absolute position ``i + t_key - t_query``: with a KV cache the last
    t_query positions are new and the keys include everything before them. Key j is
    allowed iff ``j <= i + t_key - t_query``. With t_key == t_query this is ``tril``.
    """
    t_key = t_query if t_key is None else t_key
    if t_key < t_query:
        raise ValueError(f"t_key={t_key} < t_query={t_query}: every query needs its own key")
    i = torch.arange(t_query, device=device).unsqueeze(1)  # (Tq, 1)
    j = torch.arange(t_key, device=device).unsqueeze(0)  # (1, Tk)
    return j <= i + (t_key - t_query)  # (Tq, Tk)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Hugging Face ``attention_mask`` (B, T), 1 = token, 0 = padding -> bool (B, 1, 1, T).

    True = may attend. The two singleton dimensions broadcast over heads and queries:
    every query may look at the real tokens and none at the padding.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seq_len), got shape {tuple(attention_mask.shape)}")
    return (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, T)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 training: bool = False, scale: float | None = None,
                                 return_weights: bool = False):
    """``softmax(q @ k.T * scale) @ v`` with an optional mask.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> out (B, H, Tq, D); with ``return_weights``
    also the attention weights (B, H, Tq, Tk).

    ``mask`` is bool, broadcastable to (B, H, Tq, Tk), True = may attend (the convention
    of torch's bool ``attn_mask``). Masked scores become -inf, so softmax gives them
    weight 0; a query with nothing to attend to gets weights 0 and output 0.
    ``scale`` defaults to 1/sqrt(D): it keeps the dot products' variance near 1, so the
    softmax does not saturate as D grows. Dropout acts on the weights when ``training``.
    """
    scale = q.size(-1) ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = softmax(scores, dim=-1)  # (B, H, Tq, Tk), rows sum to 1 (or 0 if fully masked)
    weights = dropout(weights, dropout_p, training)
    out = weights @ v  # (B, H, Tq, D)
    return (out, weights) if return_weights else out


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D): each head gets its own slice of the features."""
    B, T, C = x.shape
    if C % n_heads != 0:
        raise ValueError(f"hidden size {C} is not divisible by n_heads={n_heads}")
    return x.reshape(B, T, n_heads, C // n_heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D), contiguous: the inverse of ``split_heads``."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, H * D)  # (B, T, C)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention: project to q, k, v, attend per head, merge, project out.

    Submodules ``query``, ``key``, ``value``, ``out``: each a Linear(d_model, d_model).
    ``dropout`` applies to the attention weights in training (as in ``nn.MultiheadAttention``).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.query = Linear(d_model, d_model, bias)
        self.key = Linear(d_model, d_model, bias)
        self.value = Linear(d_model, d_model, bias)
        self.out = Linear(d_model, d_model, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False):
        """x (B, T, d_model); mask bool broadcastable to (B, H, T, T), True = may attend.

        Returns (B, T, d_model), plus the weights (B, H, T, T) with ``return_weights``.
        """
        q = split_heads(self.query(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.key(x), self.n_heads)  # (B, H, T, D)
        v = split_heads(self.value(x), self.n_heads)  # (B, H, T, D)
        y, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=self.dropout,
                                                  training=self.training, return_weights=True)
        y = self.out(merge_heads(y))  # (B, T, d_model)
        return (y, weights) if return_weights else y


# --------------------------------------------------------------------------------------
# Feed-forward

class FeedForward(nn.Module):
    """Position-wise feed-forward: ``linear2(dropout(act(linear1(x))))``, (B, T, d_model) -> same.

    Widens each token's vector to ``d_ff`` (usually 4 * d_model), applies the
    nonlinearity, and projects back. Names as in ``nn.TransformerEncoderLayer``.
    ``activation`` is a name from ``ACTIVATIONS`` or a function.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str | Callable = "gelu", dropout: float = 0.0):
        super().__init__()
        self.activation_name = activation if isinstance(activation, str) else getattr(activation, "__name__", "custom")
        self.activation = _activation(activation) if isinstance(activation, str) else activation
        self.linear1 = Linear(d_model, d_ff)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.linear1(x))  # (B, T, d_ff)
        return self.linear2(self.dropout(h))  # (B, T, d_model)

    def extra_repr(self) -> str:
        return f"activation={self.activation_name!r}"


# --------------------------------------------------------------------------------------
# Beyond BERT and GPT-2: RMSNorm and ALiBi (the stretch exercises of chapter 02; later
# models such as Llama, T5, Mistral, BLOOM and MPT use them)

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension: x (..., C) -> (..., C).

    ``x / sqrt(mean(x ** 2) + eps) * weight``: LayerNorm without the centring (no mean is
    subtracted) and without a bias, as in Llama, T5 and Mistral, and ``F.rms_norm``. One
    pass fewer over the data, and in practice as good. ``weight`` is (C,) or None.

    float16 / bfloat16 inputs are computed in float32 and cast back, as in ``layer_norm``.
    """
    dtype = x.dtype
    h = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    rms = torch.sqrt((h * h).mean(-1, keepdim=True) + eps)  # (..., 1): each vector's root mean square
    out = h / rms  # (..., C), mean square 1
    if weight is not None:
        out = out * weight
    return out.to(dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the last ``normalized_shape`` features; parameter ``weight`` (ones),
    no bias, like ``torch.nn.RMSNorm`` (and Llama's ``input_layernorm``)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, *, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's slope for each head, a geometric sequence: (n_heads,) float32.

    For ``n`` heads, ``n`` a power of two, head ``h`` (from 0) gets ``2 ** (-8 * (h + 1) / n)``:
    from ``2 ** (-8 / n)`` down to ``2 ** -8``. For other ``n`` (Press et al., 2022, and
    BLOOM): the slopes of ``n0``, the largest power of two below ``n``, then every other
    slope of ``2 * n0`` -- the odd ones, exponents ``-8 * 1 / (2 n0)``, ``-8 * 3 / (2 n0)``,
    ... -- until there are ``n``.

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be at least 1, got {n_heads}")
    n0 = 1 << (n_heads.bit_length() - 1)  # the largest power of two <= n_heads
    exponents = [-8.0 * (h + 1) / n0 for h in range(n0)]
    exponents += [-8.0 * (2 * h + 1) / (2 * n0) for h in range(n_heads - n0)]  # odd steps of 2 * n0
    return torch.tensor([2.0 ** e for e in exponents], dtype=torch.float32)


def alibi_bias(n_heads: int, t_query: int, t_key: int | None = None, device=None) -> torch.Tensor:
    """ALiBi ("attention with linear biases"): what each head adds to its attention scores.

    Returns (n_heads, t_query, t_key) float32 with ``bias[h, i, j] = -slope[h] * (p_i - j)``,
    ``p_i = i + t_key - t_query`` the query's absolute position (the queries are the last
    t_query positions, as in ``causal_mask``). The further back a key, the lower its score,
    more steeply in the heads with larger slopes; no position embeddings are needed, and
    the model copes with sequences longer than it was trained on.

    Add it to ``q @ k^T / sqrt(D)`` before the softmax, together with a causal mask (keys
    after the query get a positive bias here, but the mask hides them). Softmax ignores a
    constant added to a whole row, so BLOOM's ``slope * j`` gives the same weights.
    """
    if t_key is None:
        t_key = t_query  # no cache: as many keys as queries
    elif t_key < t_query:
        raise ValueError(f"alibi_bias: {t_query} queries need at least as many keys, got t_key={t_key}")
    query_pos = torch.arange(t_key - t_query, t_key, device=device)[:, None]  # (Tq, 1), absolute positions
    key_pos = torch.arange(t_key, device=device)[None, :]  # (1, Tk)
    offset = (key_pos - query_pos).to(torch.float32)  # (Tq, Tk): 0 at the query itself, -1 one step back, ...
    return alibi_slopes(n_heads).to(device)[:, None, None] * offset  # (H, Tq, Tk)


# --------------------------------------------------------------------------------------
# Chapter 09: the primitives of today's decoders (Llama, Mistral, Qwen)

def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU ("swish"), ``x * sigmoid(x) = x / (1 + exp(-x))`` elementwise, like ``F.silu``.

    Smooth like GELU, and the gate of SwiGLU. For very negative x, ``exp(-x)`` overflows to
    inf and the result is -0.0, the right limit.
    """
    return x / (1.0 + torch.exp(-x))


def swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, down_weight: torch.Tensor,
           gate_bias: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
           down_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The SwiGLU feed-forward of Llama/Mistral/Qwen: ``down(silu(gate(x)) * up(x))``.

    x (..., C); ``gate_weight`` and ``up_weight`` (F, C), ``down_weight`` (C, F), F the
    ``intermediate_size``; biases (F,), (F,), (C,) or None -> (..., C). Two projections go
    up instead of GPT-2's one: ``silu(gate)`` decides, feature by feature, how much of ``up``
    passes (a gated linear unit, Shazeer 2020). Three matrices of C x F, so models take F
    about 8/3 C (not 4C) to keep GPT-2's parameter count.
    """
    h = silu(linear(x, gate_weight, gate_bias)) * linear(x, up_weight, up_bias)  # (..., F)
    return linear(h, down_weight, down_bias)  # (..., C)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention: (B, KV, T, D) -> (B, KV * n_rep, T, D), each KV head repeated n_rep times.

    Query heads ``g * n_rep .. g * n_rep + n_rep - 1`` share KV head ``g`` (the order of
    ``transformers``' ``repeat_kv`` and Meta's code). ``expand`` makes the copies without
    memory; the ``reshape`` then materialises them for the matrix product. The KV cache
    keeps only the KV heads: that is where the memory is saved.
    """
    if n_rep < 1:
        raise ValueError(f"n_rep must be at least 1, got {n_rep}")
    if x.dim() != 4:
        raise ValueError(f"repeat_kv takes (batch, kv_heads, tokens, head_dim), got shape {tuple(x.shape)}")
    if n_rep == 1:
        return x
    B, KV, T, D = x.shape
    return x[:, :, None].expand(B, KV, n_rep, T, D).reshape(B, KV * n_rep, T, D)


def sliding_window_mask(t_query: int, t_key: int | None = None, window: int | None = None,
                        device=None) -> torch.Tensor:
    """Causal mask that also hides keys ``window`` or more positions back: bool (Tq, Tk), True = may attend.

    Query i sits at absolute position ``p = i + Tk - Tq`` (as in ``causal_mask``); key j is
    allowed iff ``p - window < j <= p``: each token sees itself and the ``window - 1``
    tokens before it (Mistral's ``sliding_window``; ``transformers``' rule
    ``kv_idx > q_idx - sliding_window``). Information from further back still arrives,
    through the layers: layer l reaches about l * window tokens. ``window=None``: plain causal.
    """
    mask = causal_mask(t_query, t_key, device=device)  # (Tq, Tk)
    if window is None:
        return mask
    if window < 1:
        raise ValueError(f"sliding window must be at least 1 token, got {window}")
    t_key = mask.size(1)
    i = torch.arange(t_query, device=device).unsqueeze(1) + (t_key - t_query)  # (Tq, 1) absolute positions
    j = torch.arange(t_key, device=device).unsqueeze(0)  # (1, Tk)
    return mask & (j > i - window)  # (Tq, Tk)
