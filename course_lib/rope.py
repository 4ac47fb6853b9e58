"""Chapter 09: rotary position embeddings (RoPE), as Llama, Mistral and Qwen use them.

GPT-2 *adds* a learned vector per position to each token (``wpe``). RoPE instead *rotates*
queries and keys: the D features of a head are D/2 pairs, and pair i of the token at
position p is turned by the angle ``p * inv_freq[i]``, with ``inv_freq[i] = theta ** (-2i / D)``
(from one turn per ~6 tokens down to one per ~theta tokens). A dot product of two rotated
vectors only depends on the *difference* of their angles, so attention scores depend on how
far apart two tokens are, not on where they are; there is no table, so no hard limit on
positions (quality still falls beyond the lengths a model was trained on).

Two layouts put the pairs in different places:

- **half-split** (``transformers``, and so the Hub's Llama checkpoints): pair i is features
  (i, i + D/2). Rotating is ``x * cos + rotate_half(x) * sin`` (``apply_rope``);
- **interleaved** (Meta's original Llama code, complex numbers): pair i is features
  (2i, 2i + 1) (``apply_rope_interleaved``).

Both compute the same attention when the q/k projection rows are permuted to match
(``interleaved_to_half`` / ``half_to_interleaved``: what ``transformers``' Llama conversion
script does to Meta's weights). Llama 3.1/3.2 stretch the low frequencies for long
contexts ("llama3" ``rope_scaling``, ``rope_frequencies``).

Shapes: B batch, H heads, T tokens, D head size (even). Angles are computed in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ROPE_TYPES", "check_rope_scaling", "rope_frequencies", "rope_cos_sin", "rotate_half", "apply_rope",
           "apply_rope_interleaved", "interleaved_to_half", "half_to_interleaved", "RotaryEmbedding"]

# rope_scaling types the course implements (config.json's "rope_type", older files say "type")
ROPE_TYPES = ("default", "linear", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(rope_scaling: dict | None) -> dict | None:
    """config.json's ``rope_scaling`` -> a checked dict with ``rope_type`` set, or None (no scaling).

    ``{"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor":
    4.0, "original_max_position_embeddings": 8192}`` (Llama 3.2), ``{"rope_type": "linear",
    "factor": f}``, ``{"rope_type": "default"}`` or None. Older files say ``"type"``. A
    ``ValueError`` names an unknown type, a missing key or a value out of range.
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"rope_scaling must be an object such as {{\"rope_type\": \"llama3\", ...}} or null, "
                         f"got {rope_scaling!r}")
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not one the course implements ({', '.join(ROPE_TYPES)}); "
                         f"'dynamic', 'yarn' and 'longrope' change the frequencies in other ways: load a model "
                         f"that uses one of the supported types, or remove rope_scaling to run without scaling")
    out = {**rope_scaling, "rope_type": kind}
    if kind in ("linear", "llama3"):
        missing = [k for k in (LLAMA3_KEYS if kind == "llama3" else ("factor",)) if k not in rope_scaling]
        if missing:
            raise ValueError(f"rope_scaling of type {kind!r} needs {', '.join(missing)}; config.json's rope_scaling "
                             f"has only {', '.join(sorted(rope_scaling))}")
        for key in (LLAMA3_KEYS if kind == "llama3" else ("factor",)):
            value = rope_scaling[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"rope_scaling[{key!r}] must be a positive number, got {value!r}")
        if rope_scaling["factor"] < 1:
            raise ValueError(f"rope_scaling['factor'] must be >= 1 (how many times longer the context gets), "
                             f"got {rope_scaling['factor']}")
        if kind == "llama3" and rope_scaling["high_freq_factor"] <= rope_scaling["low_freq_factor"]:
            raise ValueError(f"rope_scaling: high_freq_factor ({rope_scaling['high_freq_factor']}) must be greater "
                             f"than low_freq_factor ({rope_scaling['low_freq_factor']})")
    return out


def rope_frequencies(head_dim: int, theta: float = 10000.0, rope_scaling: dict | None = None) -> torch.Tensor:
    """The inverse frequency of each feature pair: (head_dim / 2,) float32, ``theta ** (-2i / head_dim)``.

    ``theta`` is config.json's ``rope_theta`` (10 000 in Llama 2, 500 000 in Llama 3, 1 000 000
    in Qwen). ``rope_scaling`` (``check_rope_scaling``):

    - ``"linear"``: every frequency divided by ``factor`` (positions interpolated);
    - ``"llama3"``: with each pair's wavelength ``2 pi / inv_freq`` (tokens per turn) and the
      old context L = ``original_max_position_embeddings``: wavelengths below
      ``L / high_freq_factor`` (fast pairs, local order) stay; wavelengths above
      ``L / low_freq_factor`` (slow pairs, long range) are divided by ``factor``; in between
      the two are blended smoothly. The same numbers as ``transformers``'
      ``ROPE_INIT_FUNCTIONS["llama3"]``.
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even and at least 2, got {head_dim}")
    if not theta > 0:
        raise ValueError(f"rope_theta must be positive, got {theta}")
    rope_scaling = check_rope_scaling(rope_scaling)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # (D/2,) 0, 2/D, 4/D, ...
    inv_freq = 1.0 / (theta ** exponents)  # (D/2,) float32, from 1 down to ~1/theta
    kind = rope_scaling["rope_type"] if rope_scaling else "default"
    if kind == "linear":
        return inv_freq / rope_scaling["factor"]
    if kind != "llama3":
        return inv_freq
    factor = rope_scaling["factor"]
    low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
    old_context = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq  # (D/2,) tokens per full turn
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)  # slow pairs: slower still
    smooth = (old_context / wavelen - low) / (high - low)  # 0 at the slow border, 1 at the fast one
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_between = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(in_between, blended, scaled)  # (D/2,) float32


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles of every token's pairs, as cos and sin in the half-split layout: (B, T) -> 2 x (B, T, D) float32.

    ``angle[b, t, i] = position_ids[b, t] * inv_freq[i]`` for i < D/2, repeated for the second
    half (feature i and i + D/2 form a pair and turn by the same angle).
    """
    if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
        raise TypeError(f"position_ids must be integers (token positions), got {position_ids.dtype}")
    freqs = position_ids[..., None].float() * inv_freq.float().to(position_ids.device)  # (B, T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D): ``[x1, x2] -> [-x2, x1]`` with x1, x2 the two halves.

    For pair (a, b) = (x[i], x[i + D/2]) that is (-b, a): the pair turned by 90 degrees, so
    ``x * cos + rotate_half(x) * sin`` turns it by any angle.
    """
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _check_rope_shapes(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"RoPE rotates queries or keys of shape (batch, heads, tokens, head_dim), got "
                         f"{tuple(x.shape)}")
    if cos.shape != sin.shape or cos.dim() != 3 or cos.size(-1) != x.size(-1) or cos.size(1) != x.size(2):
        raise ValueError(f"cos and sin must be (batch, tokens, head_dim) = (B, {x.size(2)}, {x.size(-1)}) for x of "
                         f"shape {tuple(x.shape)}, got {tuple(cos.shape)} and {tuple(sin.shape)}")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys, half-split layout: x (B, H, T, D), cos/sin (B, T, D) -> (B, H, T, D), x's dtype.

    ``x * cos + rotate_half(x) * sin`` (``transformers``' ``apply_rotary_pos_emb``). cos and
    sin are cast to x's dtype first, as ``transformers`` does.
    """
    _check_rope_shapes(x, cos, sin)
    cos, sin = cos.to(x.dtype).unsqueeze(1), sin.to(x.dtype).unsqueeze(1)  # (B, 1, T, D): the same for every head
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys, interleaved layout (Meta's code): pair i is features (2i, 2i + 1).

    x (B, H, T, D); cos/sin in the half-split layout of ``rope_cos_sin`` (B, T, D) (their first
    half holds each pair's angle) -> (B, H, T, D). Meta writes it with complex numbers:
    ``(x[2i] + 1j * x[2i+1]) * exp(1j * angle_i)``; here the same product in real arithmetic.
    """
    _check_rope_shapes(x, cos, sin)
    half = x.size(-1) // 2
    c = cos[..., :half].to(x.dtype).unsqueeze(1)  # (B, 1, T, D/2)
    s = sin[..., :half].to(x.dtype).unsqueeze(1)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each: the pairs' two features
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)  # (B, H, T, D)


def _permute_rows(weight: torch.Tensor, n_heads: int, from_interleaved: bool) -> torch.Tensor:
    rows = weight.size(0)
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"a q/k projection of {rows} output rows cannot be {n_heads} heads of an even head_dim; "
                         f"pass the number of heads this projection has (num_key_value_heads for k_proj)")
    D, rest = rows // n_heads, weight.shape[1:]
    if from_interleaved:  # rows of a head: (pair, 2) -> (2, pair)
        return weight.reshape(n_heads, D // 2, 2, *rest).transpose(1, 2).reshape(weight.shape)
    return weight.reshape(n_heads, 2, D // 2, *rest).transpose(1, 2).reshape(weight.shape)


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's q_proj/k_proj weight (H*D, C) or bias (H*D,) -> the half-split layout ``transformers`` uses.

    Within each head, output row ``2i + j`` (pair i, feature j) moves to row ``j * D/2 + i``.
    With weights converted this way, ``apply_rope`` gives the same attention as
    ``apply_rope_interleaved`` on the original weights (the permutation is the same for q
    and k, so every dot product is unchanged). For k_proj pass ``num_key_value_heads``.
    """
    return _permute_rows(weight, n_heads, from_interleaved=True)


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_half``: a Hub (half-split) q/k weight -> Meta's interleaved layout."""
    return _permute_rows(weight, n_heads, from_interleaved=False)


class RotaryEmbedding(nn.Module):
    """position_ids (B, T) -> cos, sin (B, T, D) float32 for ``apply_rope``; holds no parameters.

    The inverse frequencies are computed once per device and kept as a plain attribute, not a
    buffer: a checkpoint never holds them (they follow from the config), and a model built on
    the ``meta`` device for loading gets real ones without reading anything.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, rope_scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.rope_scaling = check_rope_scaling(rope_scaling)
        with torch.device("cpu"):  # real numbers even when the model is being built on "meta"
            self._inv_freq = {torch.device("cpu"): rope_frequencies(head_dim, theta, self.rope_scaling)}

    def inv_freq(self, device) -> torch.Tensor:
        """(D/2,) float32 on ``device``."""
        device = torch.device(device)
        if device not in self._inv_freq:
            self._inv_freq[device] = self._inv_freq[torch.device("cpu")].to(device)
        return self._inv_freq[device]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(position_ids, self.inv_freq(position_ids.device))

    def extra_repr(self) -> str:
        kind = self.rope_scaling["rope_type"] if self.rope_scaling else "default"
        return f"head_dim={self.head_dim}, theta={self.theta:g}, scaling={kind!r}"
