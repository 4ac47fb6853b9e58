"""Chapter 09's primitives in ``course_lib.layers``: SiLU, SwiGLU, repeat_kv, the sliding-window mask.

Each against its reference in ``torch`` (``F.silu``, ``F.scaled_dot_product_attention`` with
``enable_gqa``) or ``transformers`` (``LlamaMLP``, ``repeat_kv``, the sliding-window rule of
``masking_utils``), values and gradients where it trains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.layers import (causal_mask, padding_mask, repeat_kv, scaled_dot_product_attention, silu,
                               sliding_window_mask, swiglu)


def test_silu_equals_torch_values_and_gradients():
    x = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([-1e4, 1e4, 0.0])]).requires_grad_()
    ours = silu(x)
    reference = F.silu(x)
    assert torch.allclose(ours, reference, atol=1e-6, rtol=1e-6)
    assert ours[-3].item() == 0.0 and ours[-2].item() == 1e4  # no NaN at the extremes
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(g_ours[:-3], g_ref[:-3], atol=1e-5)


def test_swiglu_equals_transformers_llama_mlp():
    tf = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = tf.LlamaConfig(hidden_size=32, intermediate_size=88, num_attention_heads=4)
    mlp = LlamaMLP(config).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        ours = swiglu(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        assert (ours - mlp(x)).abs().max() <= 1e-6
    b = [torch.randn(n, generator=g) for n in (88, 88, 32)]
    with_bias = swiglu(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, *b)
    reference = F.linear(F.silu(F.linear(x, mlp.gate_proj.weight, b[0])) * F.linear(x, mlp.up_proj.weight, b[1]),
                         mlp.down_proj.weight, b[2])
    assert (with_bias - reference).abs().max() <= 1e-5


def test_repeat_kv_equals_transformers_and_repeat_interleave():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

    x = torch.randn(2, 3, 5, 8)
    for n_rep in (1, 4):
        ours = repeat_kv(x, n_rep)
        assert ours.shape == (2, 3 * n_rep, 5, 8)
        assert torch.equal(ours, hf_repeat_kv(x, n_rep))
        assert torch.equal(ours, x.repeat_interleave(n_rep, dim=1))  # heads 0..n-1 share KV head 0, ...
    assert repeat_kv(x, 1) is x  # plain multi-head attention: nothing to copy
    with pytest.raises(ValueError, match="n_rep must be at least 1"):
        repeat_kv(x, 0)
    with pytest.raises(ValueError, match="batch, kv_heads, tokens, head_dim"):
        repeat_kv(x[0], 2)


def test_grouped_query_attention_equals_torch_enable_gqa():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 6, 16, generator=g)
    k, v = torch.randn(2, 2, 6, 16, generator=g), torch.randn(2, 2, 6, 16, generator=g)
    mask = causal_mask(6)
    ours = scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert (ours - reference).abs().max() <= 1e-5


def brute_force_window(t_query: int, t_key: int, window: int) -> torch.Tensor:
    """transformers' rule (masking_utils): causal and ``kv_idx > q_idx - sliding_window``, query positions absolute."""
    out = torch.zeros(t_query, t_key, dtype=torch.bool)
    for i in range(t_query):
        q_idx = i + t_key - t_query
        for j in range(t_key):
            out[i, j] = j <= q_idx and j > q_idx - window
    return out


@pytest.mark.parametrize("t_query, t_key, window", [(7, 7, 3), (1, 10, 4), (3, 12, 5), (6, 6, 1), (5, 5, 9)])
def test_sliding_window_mask(t_query, t_key, window):
    mask = sliding_window_mask(t_query, t_key, window)
    assert mask.dtype == torch.bool and mask.shape == (t_query, t_key)
    assert torch.equal(mask, brute_force_window(t_query, t_key, window))
    assert bool((mask.sum(-1) <= window).all()) and bool(mask[:, -1][-1])  # at most `window` keys, itself included
    if window >= t_key:
        assert torch.equal(mask, causal_mask(t_query, t_key))


def test_sliding_window_mask_matches_transformers_masking_utils():
    pytest.importorskip("transformers")
    from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_overlay

    rule = and_masks(causal_mask_function, sliding_window_overlay(4))
    reference = torch.tensor([[bool(rule(0, 0, torch.tensor(i), torch.tensor(j))) for j in range(9)]
                              for i in range(9)])
    assert torch.equal(sliding_window_mask(9, 9, 4), reference)


def test_sliding_window_mask_defaults_and_errors():
    assert torch.equal(sliding_window_mask(4, 6, None), causal_mask(4, 6))
    assert torch.equal(sliding_window_mask(5, window=2), brute_force_window(5, 5, 2))
    with pytest.raises(ValueError, match="at least 1 token"):
        sliding_window_mask(3, 3, 0)
    combined = sliding_window_mask(3, 3, 2) & padding_mask(torch.tensor([[0, 1, 1]]))
    assert combined.shape == (1, 1, 3, 3) and not bool(combined[0, 0, :, 0].any())
