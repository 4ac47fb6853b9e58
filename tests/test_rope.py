"""``course_lib.rope`` against ``transformers``' rotary code (the test-only oracle) and Meta's complex-number form.

- the inverse frequencies: plain, "linear" and "llama3" scaling, as ``LlamaRotaryEmbedding`` /
  ``ROPE_INIT_FUNCTIONS`` compute them from real configs (Llama 3.2 1B, Llama 3.1 8B);
- cos/sin for (B, T) positions, ``rotate_half`` and ``apply_rope`` against
  ``LlamaRotaryEmbedding.forward`` and ``apply_rotary_pos_emb``;
- the interleaved layout against Meta's ``torch.polar`` / complex product, and the q/k weight
  permutation: converted weights give the same attention output;
- what RoPE is for: scores depend on the distance between tokens only;
- clear errors for what cannot work.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.layers import scaled_dot_product_attention, causal_mask
from course_lib.rope import (RotaryEmbedding, apply_rope, apply_rope_interleaved, check_rope_scaling,
                             half_to_interleaved, interleaved_to_half, rope_cos_sin, rope_frequencies, rotate_half)

LLAMA32_SCALING = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # meta-llama/Llama-3.2-1B
LLAMA31_SCALING = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # meta-llama/Llama-3.1-8B


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


def hf_config(tf, head_dim: int, theta: float, scaling: dict | None, max_positions: int = 131072):
    rope = {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling, "rope_theta": theta}
    return tf.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                          max_position_embeddings=max_positions, rope_parameters=rope)


def relative_gap(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape and ours.dtype == reference.dtype == torch.float32
    return ((ours.double() - reference.double()).abs() / reference.double().abs()).max().item()


@pytest.mark.parametrize("head_dim, theta", [(64, 500000.0), (64, 100000.0), (128, 1000000.0), (8, 10000.0)])
def test_plain_frequencies_equal_transformers(tf, head_dim, theta):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    reference, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config(tf, head_dim, theta, None))
    ours = rope_frequencies(head_dim, theta)
    assert ours.shape == (head_dim // 2,) and ours.dtype == torch.float32
    assert relative_gap(ours, reference) <= 1e-6
    assert ours[0] == 1.0 and ours[-1] < 1.0 / theta ** (1 - 2.5 / head_dim)  # from one turn per 2 pi tokens to ~theta


@pytest.mark.parametrize("scaling, head_dim", [(LLAMA32_SCALING, 64), (LLAMA31_SCALING, 128)])
def test_llama3_scaling_equals_transformers_and_only_slows_the_slow_pairs(tf, scaling, head_dim):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    reference, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_config(tf, head_dim, 500000.0, dict(scaling)))
    ours = rope_frequencies(head_dim, 500000.0, scaling)
    assert attention_factor == 1.0  # llama3 leaves cos/sin unscaled: nothing to mirror
    assert relative_gap(ours, reference) <= 1e-6
    plain = rope_frequencies(head_dim, 500000.0)
    wavelength = 2 * math.pi / plain
    fast = wavelength < 8192 / scaling["high_freq_factor"]
    slow = wavelength > 8192 / scaling["low_freq_factor"]
    assert fast.any() and slow.any() and (~fast & ~slow).any()  # all three regimes occur in a real config
    assert torch.equal(ours[fast], plain[fast])
    assert torch.allclose(ours[slow], plain[slow] / scaling["factor"])
    between = ~fast & ~slow
    assert bool(((ours[between] < plain[between]) & (ours[between] > plain[between] / scaling["factor"])).all())


def test_linear_scaling_equals_transformers(tf):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "linear", "factor": 4.0}
    reference, _ = ROPE_INIT_FUNCTIONS["linear"](hf_config(tf, 64, 10000.0, dict(scaling)))
    assert relative_gap(rope_frequencies(64, 10000.0, scaling), reference) <= 1e-6


def test_cos_sin_equal_llama_rotary_embedding(tf):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config(tf, 64, 500000.0, dict(LLAMA32_SCALING))
    reference = LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]) + torch.tensor([[0], [9000]])
    x = torch.zeros(2, 7, 64)
    cos_ref, sin_ref = reference(x, positions)
    cos, sin = RotaryEmbedding(64, 500000.0, LLAMA32_SCALING)(positions)
    assert cos.shape == sin.shape == (2, 7, 64) and cos.dtype == torch.float32
    assert (cos - cos_ref).abs().max() <= 1e-6 and (sin - sin_ref).abs().max() <= 1e-6
    assert torch.equal(cos[..., :32], cos[..., 32:])  # half-split layout: feature i and i + D/2 share an angle
    direct = rope_cos_sin(positions, rope_frequencies(64, 500000.0, LLAMA32_SCALING))
    assert torch.equal(direct[0], cos) and torch.equal(direct[1], sin)


def test_rotate_half_and_apply_rope_equal_transformers(tf):
    from transformers.models.llama import modeling_llama as ml

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 16, generator=g)
    assert torch.equal(rotate_half(x), ml.rotate_half(x))
    assert torch.equal(rotate_half(rotate_half(x)), -x)  # two quarter turns
    positions = torch.randint(0, 4000, (2, 5), generator=g)
    cos, sin = rope_cos_sin(positions, rope_frequencies(16, 10000.0))
    k = torch.randn(2, 1, 5, 16, generator=g)  # a single KV head, as in grouped-query attention
    q_ref, k_ref = ml.apply_rotary_pos_emb(x, k, cos, sin)
    assert (apply_rope(x, cos, sin) - q_ref).abs().max() <= 1e-6
    assert (apply_rope(k, cos, sin) - k_ref).abs().max() <= 1e-6
    # a rotation keeps every pair's length
    rotated = apply_rope(x, cos, sin)
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731
    assert torch.allclose(pair_norm(rotated), pair_norm(x), atol=1e-5)
    half = apply_rope(x.half(), cos, sin)
    assert half.dtype == torch.float16  # cos/sin follow x's dtype, as in transformers


def meta_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's original llama/model.py: precompute_freqs_cis + apply_rotary_emb, with complex numbers.
    x (B, H, T, D), positions (B, T)."""
    D = x.size(-1)
    freqs = 1.0 / (theta ** (torch.arange(0, D, 2)[: D // 2].float() / D))
    angles = positions[..., None].float() * freqs  # (B, T, D/2)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)[:, None]  # (B, 1, T, D/2)
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, H, T, D/2)
    return torch.view_as_real(x_complex * freqs_cis).flatten(-2)


def test_interleaved_layout_equals_metas_complex_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 32, generator=g)
    positions = torch.randint(0, 2048, (2, 6), generator=g)
    cos, sin = rope_cos_sin(positions, rope_frequencies(32, 10000.0))
    ours = apply_rope_interleaved(x, cos, sin)
    assert (ours - meta_rope(x, positions, 10000.0)).abs().max() <= 1e-5
    assert (ours - apply_rope(x, cos, sin)).abs().max() > 0.1  # the two layouts really differ


def test_weight_permutation_round_trip():
    w = torch.arange(2 * 8 * 3).reshape(16, 3).float()  # 2 heads of head_dim 8, C = 3
    half = interleaved_to_half(w, n_heads=2)
    assert torch.equal(half_to_interleaved(half, n_heads=2), w)
    assert torch.equal(half[:4], w[0:8:2]) and torch.equal(half[4:8], w[1:8:2])  # evens first, then odds
    assert torch.equal(half[8:], interleaved_to_half(w[8:], 1))  # heads are permuted separately
    bias = torch.arange(16.0)
    assert torch.equal(interleaved_to_half(bias, 2), half[:, 0] / 3)


def test_converted_q_k_weights_give_the_same_attention_output():
    """Meta's layout (interleaved RoPE on its weights) = the Hub's (half-split RoPE on permuted weights)."""
    g = torch.Generator().manual_seed(2)
    B, T, C, H, KV, D = 2, 7, 48, 4, 2, 16
    x = torch.randn(B, T, C, generator=g)
    wq, wk, wv = (torch.randn(n * D, C, generator=g) / C ** 0.5 for n in (H, KV, KV))
    positions = torch.arange(T).expand(B, T) + torch.tensor([[0], [100]])
    cos, sin = rope_cos_sin(positions, rope_frequencies(D, 10000.0))
    split = lambda t, n: t.view(B, T, n, D).transpose(1, 2)  # noqa: E731
    mask = causal_mask(T)

    def attention(q, k, v):
        k, v = (t.repeat_interleave(H // KV, dim=1) for t in (k, v))
        return scaled_dot_product_attention(q, k, v, mask)

    v = split(x @ wv.T, KV)
    meta = attention(apply_rope_interleaved(split(x @ wq.T, H), cos, sin),
                     apply_rope_interleaved(split(x @ wk.T, KV), cos, sin), v)
    wq_hub, wk_hub = interleaved_to_half(wq, H), interleaved_to_half(wk, KV)
    hub = attention(apply_rope(split(x @ wq_hub.T, H), cos, sin), apply_rope(split(x @ wk_hub.T, KV), cos, sin), v)
    assert (meta - hub).abs().max() <= 1e-5
    unconverted = attention(apply_rope(split(x @ wq.T, H), cos, sin), apply_rope(split(x @ wk.T, KV), cos, sin), v)
    assert (meta - unconverted).abs().max() > 1e-3  # without the permutation the outputs differ


def test_scores_depend_on_the_distance_only():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 64, generator=g), torch.randn(1, 1, 1, 64, generator=g)
    inv_freq = rope_frequencies(64, 500000.0, LLAMA32_SCALING)

    def score(m: int, n: int) -> float:
        cq, sq = rope_cos_sin(torch.tensor([[m]]), inv_freq)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), inv_freq)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(10, 3) == pytest.approx(score(1010, 1003), abs=1e-3)
    assert score(10, 3) != pytest.approx(score(10, 5), abs=1e-3)


def test_errors_name_the_problem(tf):
    with pytest.raises(ValueError, match="'yarn' is not one the course implements"):
        rope_frequencies(64, 10000.0, {"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="'dynamic'"):
        check_rope_scaling({"type": "dynamic", "factor": 2.0})  # older files say "type"
    incomplete = {k: v for k, v in LLAMA32_SCALING.items() if k != "low_freq_factor"}
    with pytest.raises(ValueError, match="needs low_freq_factor"):
        rope_frequencies(64, 500000.0, incomplete)
    with pytest.raises(KeyError):  # transformers refuses the same config
        tf.LlamaConfig(rope_parameters={**incomplete, "rope_theta": 500000.0})
    with pytest.raises(ValueError, match="high_freq_factor .* must be greater"):
        check_rope_scaling({**LLAMA32_SCALING, "high_freq_factor": 1.0})
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_frequencies(63, 10000.0)
    with pytest.raises(ValueError, match="cannot be 3 heads"):
        interleaved_to_half(torch.zeros(16, 4), 3)
    with pytest.raises(ValueError, match=r"cos and sin must be \(batch, tokens, head_dim\)"):
        apply_rope(torch.zeros(1, 2, 5, 8), torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))
    with pytest.raises(TypeError, match="position_ids must be integers"):
        rope_cos_sin(torch.zeros(1, 3), rope_frequencies(8))
    assert check_rope_scaling(None) is None
    assert check_rope_scaling({"type": "llama3", **{k: v for k, v in LLAMA32_SCALING.items() if k != "rope_type"}})[
        "rope_type"] == "llama3"


def test_rotary_embedding_built_on_meta_has_real_frequencies():
    with torch.device("meta"):
        rotary = RotaryEmbedding(16, 10000.0)
    cos, _ = rotary(torch.arange(4)[None])
    assert cos.device.type == "cpu" and torch.equal(cos[0, 0], torch.ones(16))
