"""course_lib.layers against its torch.nn / torch.nn.functional counterparts.

Same inputs (and copied weights) on both sides; float32 outputs must agree to 1e-6
absolute and gradients to 1e-5. Where a piece's rounding error grows with the size of
its output (one float32 ulp is 1.2e-7 of the value), the test says so and adds a
relative tolerance instead of pretending 1e-6 absolute holds for any input.
"""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import layers as L

FAST = settings(max_examples=25, deadline=None)


def close(actual, expected, atol=1e-6, rtol=0.0):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def grads(fn, inputs, upstream):
    """d(sum(fn(*inputs) * upstream)) / d(inputs): a random upstream gradient, not just ones."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    return torch.autograd.grad((fn(*inputs) * upstream).sum(), inputs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------
# Linear

def test_linear_matches_F_linear():
    ref = nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    close(L.linear(x, ref.weight, ref.bias), F.linear(x, ref.weight, ref.bias))
    close(L.linear(x, ref.weight), F.linear(x, ref.weight))
    assert L.linear(torch.randn(64), ref.weight, ref.bias).shape == (32,)


def test_Linear_same_init_params_and_output_as_nn_Linear():
    for bias in (True, False):
        torch.manual_seed(1)
        ours = L.Linear(48, 20, bias=bias)
        torch.manual_seed(1)
        ref = nn.Linear(48, 20, bias=bias)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        # same seed, same draws: identical (not just close) weights
        assert torch.equal(ours.weight, ref.weight)
        if bias:
            assert torch.equal(ours.bias, ref.bias)
        else:
            assert ours.bias is None
        assert repr(ours) == repr(ref)
        x = torch.randn(4, 7, 48)
        close(ours(x), ref(x))
    # a checkpoint written by nn.Linear loads into ours
    ours = L.Linear(48, 20)
    ours.load_state_dict(nn.Linear(48, 20).state_dict())


def test_Linear_device_and_dtype():
    lin = L.Linear(4, 3, dtype=torch.float64)
    assert lin.weight.dtype == lin.bias.dtype == torch.float64
    assert lin(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64
    assert L.Linear(4, 3, device="meta").weight.device.type == "meta"


# --------------------------------------------------------------------------------------
# Embedding

def test_embedding_matches_nn_Embedding():
    torch.manual_seed(2)
    ours = L.Embedding(50, 16, padding_idx=1)
    torch.manual_seed(2)
    ref = nn.Embedding(50, 16, padding_idx=1)
    assert torch.equal(ours.weight, ref.weight)  # same init: N(0, 1), padding row zero
    assert torch.equal(ours.weight[1], torch.zeros(16))
    assert repr(ours) == repr(ref)
    ids = torch.randint(0, 50, (3, 9))
    ids[:, -2:] = 1  # some padding
    assert torch.equal(ours(ids), ref(ids))
    assert torch.equal(L.embedding(ids, ref.weight), F.embedding(ids, ref.weight))


def test_embedding_padding_row_gets_no_gradient_like_torch():
    ref = nn.Embedding(10, 4, padding_idx=0)
    ours = L.Embedding(10, 4, padding_idx=0)
    ours.load_state_dict(ref.state_dict())
    ids = torch.tensor([[0, 3, 3, 0, 7]])
    upstream = torch.randn(1, 5, 4)
    (ours(ids) * upstream).sum().backward()
    (ref(ids) * upstream).sum().backward()
    close(ours.weight.grad, ref.weight.grad)
    assert torch.equal(ours.weight.grad[0], torch.zeros(4))
    assert L.Embedding(10, 4, padding_idx=-1).padding_idx == 9  # negative index, as in torch
    with pytest.raises(ValueError):
        L.Embedding(10, 4, padding_idx=10)


# --------------------------------------------------------------------------------------
# LayerNorm

def test_layer_norm_matches_F_layer_norm_float32():
    x = torch.randn(4, 50, 768) * 3 + 1
    w = 1 + 0.1 * torch.randn(768)  # trained LayerNorm weights sit near 1
    b = 0.1 * torch.randn(768)
    ours = L.layer_norm(x, w, b)
    # Ours and torch's are each within 1e-6 of the float64 result (measured: < 9e-7 over
    # 30 seeds), but they sum in different orders and can err in opposite directions, so
    # between them an ulp-sized relative term is needed (seen: 1.2e-6 at |y| = 3.5).
    close(ours, F.layer_norm(x.double(), (768,), w.double(), b.double()).float())
    close(ours, F.layer_norm(x, (768,), w, b), atol=1e-6, rtol=1e-6)
    close(L.layer_norm(x, None, None), F.layer_norm(x, (768,)), atol=1e-6, rtol=1e-6)
    close(L.layer_norm(x, w, b, eps=1e-12), F.layer_norm(x, (768,), w, b, eps=1e-12), atol=1e-6, rtol=1e-6)


def test_layer_norm_large_outputs_agree_to_an_ulp():
    # With weights ~ N(0, 4) outputs reach |y| ~ 40, where one float32 ulp is ~4e-6: 1e-6
    # absolute is below the precision of the numbers themselves, so compare relatively.
    x = torch.randn(8, 256) * 3 + 1
    w, b = 4 * torch.randn(256), torch.randn(256)
    close(L.layer_norm(x, w, b), F.layer_norm(x, (256,), w, b), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_half_types_compute_in_float32(dtype):
    x = (torch.randn(4, 50, 768) * 3 + 1).to(dtype)
    w = (1 + 0.1 * torch.randn(768)).to(dtype)
    b = (0.1 * torch.randn(768)).to(dtype)
    ours = L.layer_norm(x, w, b)
    assert ours.dtype == dtype  # computed in float32, returned in the input's dtype
    # torch's half LayerNorm also accumulates in float32; the two differ at most by
    # one rounding of the final cast (an ulp: 2^-10 relative in fp16, 2^-7 in bf16),
    # which is what assert_close's default tolerances for these dtypes allow
    torch.testing.assert_close(ours, F.layer_norm(x, (768,), w, b))
    # ... and ours is the float32 result rounded once
    in_float32 = F.layer_norm(x.float(), (768,), w.float(), b.float()).to(dtype)
    torch.testing.assert_close(ours, in_float32)
    module = L.LayerNorm(768, dtype=dtype)
    assert module(x).dtype == module.weight.dtype == dtype


def test_LayerNorm_module_matches_nn_LayerNorm():
    ref = nn.LayerNorm(32, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_(1, 0.1)
        ref.bias.normal_(0, 0.1)
    ours = L.LayerNorm(32, eps=1e-6)
    ours.load_state_dict(ref.state_dict())  # same parameter names: weight, bias
    x = torch.randn(2, 5, 32)
    close(ours(x), ref(x))
    plain = L.LayerNorm(32, elementwise_affine=False)
    assert list(plain.parameters()) == []
    close(plain(x), nn.LayerNorm(32, elementwise_affine=False)(x))
    assert torch.equal(L.LayerNorm(32).weight, torch.ones(32))
    assert torch.equal(L.LayerNorm(32).bias, torch.zeros(32))


def test_layer_norm_gradients_match_torch():
    x = torch.randn(3, 7, 64) * 2
    w, b = 1 + 0.1 * torch.randn(64), 0.1 * torch.randn(64)
    up = torch.randn(3, 7, 64)
    ours = grads(lambda x, w, b: L.layer_norm(x, w, b), [x, w, b], up)
    ref = grads(lambda x, w, b: F.layer_norm(x, (64,), w, b), [x, w, b], up)
    for g, r in zip(ours, ref):
        close(g, r, atol=1e-5)


@FAST
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), c=st.integers(2, 100),
       scale=st.sampled_from([1e-2, 1.0, 1e2]), seed=st.integers(0, 2**16))
def test_layer_norm_random_shapes(shape, c, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, c, generator=g) * scale
    w, b = 1 + 0.1 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)
    close(L.layer_norm(x, w, b), F.layer_norm(x, (c,), w, b), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Activations

def test_relu_matches_torch():
    x = torch.cat([torch.randn(1000), torch.tensor([0.0, -0.0, float("inf"), float("-inf")])])
    assert torch.equal(L.relu(x), torch.relu(x))
    assert torch.isnan(L.relu(torch.tensor([float("nan")]))).all()  # NaN is not hidden
    up = torch.randn_like(x)
    close(grads(L.relu, [x], up)[0], grads(torch.relu, [x], up)[0])


def gelu_float64(x, approximate="none"):
    """The true curve, computed in float64 and rounded once to x's dtype."""
    t = x.double()
    if approximate == "tanh":
        y = 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))
    else:
        y = 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))
    return y.to(x.dtype)


def test_gelu_and_gelu_tanh_match_F_gelu():
    x = torch.cat([torch.linspace(-8, 8, 200_001), 2 * torch.randn(10_000)])
    # Exact GELU needs 2e-6, not 1e-6: torch's own CPU kernel (2.13) is off the float64
    # curve by up to 1.2e-6 (~3 ulps) around |x| = 3..4, while ours stays within an ulp
    # (5e-7 for outputs below 8) -- checked here so the looser bound is torch's, not ours.
    close(L.gelu(x), F.gelu(x), atol=2e-6)
    close(L.gelu(x), gelu_float64(x), atol=5e-7)
    close(L.gelu_tanh(x), F.gelu(x, approximate="tanh"))
    close(L.gelu_tanh(x), gelu_float64(x, "tanh"), atol=5e-7)
    close(L.GELU()(x), nn.GELU()(x), atol=2e-6)
    close(L.GELU("tanh")(x), nn.GELU(approximate="tanh")(x))
    assert repr(L.GELU("tanh")) == repr(nn.GELU(approximate="tanh"))
    with pytest.raises(ValueError):
        L.GELU("fast")


def test_gelu_wide_range_agrees_to_an_ulp():
    # gelu(x) ~ x for large x: the rounding error is an ulp of the output (2e-6 at
    # |x| = 20), so an absolute bound cannot hold out there; compare relatively.
    x = torch.linspace(-1000, 1000, 100_001)
    close(L.gelu(x), gelu_float64(x), atol=5e-7, rtol=2.4e-7)
    close(L.gelu(x), F.gelu(x), atol=2e-6, rtol=1e-6)
    close(L.gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    assert torch.isfinite(L.gelu_tanh(x)).all()  # x**3 overflows only beyond ~1e12


def test_gelu_gradients_match_torch():
    x = 2 * torch.randn(5000)
    up = torch.randn(5000)
    close(grads(L.gelu, [x], up)[0], grads(F.gelu, [x], up)[0], atol=1e-5)
    close(grads(L.gelu_tanh, [x], up)[0],
          grads(lambda t: F.gelu(t, approximate="tanh"), [x], up)[0], atol=1e-5)


def test_activation_names_follow_hugging_face_configs():
    assert L.activation("gelu") is L.gelu  # BERT / RoBERTa hidden_act
    assert L.activation("gelu_new") is L.gelu_tanh  # GPT-2 activation_function
    assert L.activation("gelu_pytorch_tanh") is L.gelu_tanh
    assert L.activation("relu") is L.relu
    assert set(L.ACTIVATIONS) >= {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}
    with pytest.raises(ValueError, match="gelu_new"):  # the message lists the known names
        L.activation("swishy")


# --------------------------------------------------------------------------------------
# Dropout

def test_dropout_identity_cases_and_errors():
    x = torch.randn(100)
    assert L.dropout(x, 0.5, training=False) is x
    assert L.dropout(x, 0.0) is x
    assert torch.equal(L.dropout(x, 1.0), torch.zeros(100))
    for p in (-0.1, 1.1):
        with pytest.raises(ValueError):
            L.dropout(x, p)
        with pytest.raises(ValueError):
            L.Dropout(p)


def test_dropout_statistics_and_scaling():
    p, n = 0.3, 1_000_000
    x = torch.ones(n)
    y = L.dropout(x, p, generator=torch.Generator().manual_seed(0))
    zero_fraction = (y == 0).float().mean().item()
    # binomial standard deviation sqrt(p(1-p)/n) = 4.6e-4; 0.005 is > 10 of them
    assert abs(zero_fraction - p) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.005  # inverted dropout keeps the mean
    kept = y[y != 0]
    close(kept, torch.full_like(kept, 1 / (1 - p)))  # survivors scaled by 1/(1-p)


def test_dropout_seeded_generator_is_reproducible():
    x = torch.randn(1000)
    a = L.dropout(x, 0.5, generator=torch.Generator().manual_seed(7))
    b = L.dropout(x, 0.5, generator=torch.Generator().manual_seed(7))
    c = L.dropout(x, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dropout_gradient_flows_through_kept_elements():
    x = torch.randn(1000, requires_grad=True)
    y = L.dropout(x, 0.25, generator=torch.Generator().manual_seed(0))
    y.sum().backward()
    kept = y.detach() != 0
    close(x.grad, kept.float() / 0.75)  # d/dx = mask / (1 - p)
    x.grad = None
    L.dropout(x, 1.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(1000))


def test_Dropout_module_follows_train_and_eval():
    d = L.Dropout(0.5)
    assert repr(d) == "Dropout(p=0.5)"
    x = torch.ones(10_000)
    assert (d(x) == 0).any()
    d.eval()
    assert d(x) is x


# --------------------------------------------------------------------------------------
# Softmax

def test_softmax_matches_torch():
    x = 10 * torch.randn(16, 33, 20)
    for dim in (-1, 0, 1):
        close(L.softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_is_stable_for_large_values():
    x = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4 + 2.0, -1e4]])
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert torch.isnan(naive[0]).any()  # exp(1e4) = inf, inf / inf = NaN
    close(L.softmax(x), torch.softmax(x, -1))
    assert torch.isfinite(L.softmax(x)).all()


def test_softmax_with_minus_inf_and_fully_masked_rows():
    x = torch.randn(3, 5)
    x[0, [1, 3]] = float("-inf")  # partly masked
    x[2, :] = float("-inf")  # fully masked
    ours = L.softmax(x)
    close(ours[:2], torch.softmax(x[:2], -1))
    assert torch.equal(ours[0, [1, 3]], torch.zeros(2))
    # torch.softmax gives NaN on a fully masked row (max is -inf, -inf - -inf = NaN);
    # ours gives zeros: a padded query attends nowhere
    assert torch.isnan(torch.softmax(x, -1)[2]).all()
    assert torch.equal(ours[2], torch.zeros(5))
    # ... and its gradient is zero, not NaN
    g = grads(L.softmax, [x], torch.randn(3, 5))[0]
    assert torch.isfinite(g).all() and torch.equal(g[2], torch.zeros(5))


def test_softmax_gradients_match_torch():
    x = 3 * torch.randn(6, 40)
    x[1, :5] = float("-inf")
    up = torch.randn(6, 40)
    close(grads(L.softmax, [x], up)[0], grads(lambda t: torch.softmax(t, -1), [x], up)[0], atol=1e-5)


@FAST
@given(shape=st.lists(st.integers(1, 8), min_size=1, max_size=4), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
       seed=st.integers(0, 2**16), data=st.data())
def test_softmax_random_shapes(shape, scale, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
    close(L.softmax(x, dim), torch.softmax(x, dim))


# --------------------------------------------------------------------------------------
# Masks

def test_causal_mask_is_tril():
    for t in (1, 2, 7):
        m = L.causal_mask(t)
        assert m.dtype == torch.bool and m.shape == (t, t)
        assert torch.equal(m, torch.tril(torch.ones(t, t, dtype=torch.bool)))


def test_causal_mask_with_kv_cache():
    # 3 new queries at positions 5, 6, 7 over 8 keys: the bottom rows of the full mask
    m = L.causal_mask(3, 8)
    assert m.shape == (3, 8)
    assert torch.equal(m, L.causal_mask(8)[-3:])
    assert torch.equal(m, torch.tril(torch.ones(3, 8, dtype=torch.bool), diagonal=5))
    assert m[-1].all()  # the newest token sees everything
    with pytest.raises(ValueError):
        L.causal_mask(4, 3)
    assert L.causal_mask(2, 3, device="meta").device.type == "meta"


def test_padding_mask_shape_and_values():
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    m = L.padding_mask(am)
    assert m.dtype == torch.bool and m.shape == (2, 1, 1, 4)
    assert torch.equal(m[:, 0, 0], am.bool())
    assert torch.equal(L.padding_mask(am.bool()), m)
    assert torch.equal(L.padding_mask(am.float()), m)
    assert (m & L.causal_mask(4)).shape == (2, 1, 4, 4)  # combines by broadcasting
    with pytest.raises(ValueError):
        L.padding_mask(am[None])


# --------------------------------------------------------------------------------------
# Scaled dot-product attention

def qkv(B=2, H=3, Tq=6, Tk=6, D=8):
    return torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)


ATTENTION_MASKS = {
    "none": lambda am: None,
    "causal": lambda am: L.causal_mask(6),
    "padding": lambda am: L.padding_mask(am),
    "padding+causal": lambda am: L.padding_mask(am) & L.causal_mask(6),
}


@pytest.mark.parametrize("kind", list(ATTENTION_MASKS))
def test_attention_matches_F_sdpa(kind):
    q, k, v = qkv()
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    mask = ATTENTION_MASKS[kind](am)
    # the same bool convention as torch's attn_mask: True = may attend
    close(L.scaled_dot_product_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    close(L.scaled_dot_product_attention(q, k, v, mask, scale=0.3),
          F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3))


def test_attention_with_kv_cache_shapes():
    q, k, v = qkv(Tq=2, Tk=9)
    mask = L.causal_mask(2, 9)
    out = L.scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (2, 3, 2, 8)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_attention_weights_rows_sum_to_one_or_zero():
    q, k, v = qkv()
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 2] = False  # query 2 of the first sequence may attend nowhere
    out, w = L.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert w.shape == (2, 3, 6, 6)
    sums = w.sum(-1)
    expected = torch.ones_like(sums)
    expected[0, :, 2] = 0
    close(sums, expected)
    assert torch.equal(out[0, :, 2], torch.zeros(3, 8))
    # Finding for torch 2.13 (CPU): F.scaled_dot_product_attention also returns zeros for a
    # fully masked query row (older versions returned NaN), so both agree everywhere.
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_attention_dropout_only_in_training():
    q, k, v = qkv()
    base, w = L.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert torch.equal(L.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False), base)
    _, wd = L.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True, return_weights=True)
    assert (wd == 0).any()
    kept = wd != 0
    close(wd[kept], w[kept] / 0.5)


def test_attention_gradients_match_torch():
    q, k, v = qkv()
    mask = L.padding_mask(torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])) & L.causal_mask(6)
    up = torch.randn(2, 3, 6, 8)
    ours = grads(lambda q, k, v: L.scaled_dot_product_attention(q, k, v, mask), [q, k, v], up)
    ref = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], up)
    for g, r in zip(ours, ref):
        close(g, r, atol=1e-5)


@FAST
@given(B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 9), extra=st.integers(0, 5),
       D=st.sampled_from([1, 4, 16, 64]), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_random_shapes(B, H, Tq, extra, D, masked, seed):
    g = torch.Generator().manual_seed(seed)
    Tk = Tq + extra
    q, k, v = (torch.randn(B, H, T, D, generator=g) for T in (Tq, Tk, Tk))
    # random masks include fully masked rows; torch 2.13 gives zeros there too
    mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.3 if masked else None
    close(L.scaled_dot_product_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


# --------------------------------------------------------------------------------------
# Heads

def test_split_and_merge_heads():
    x = torch.randn(2, 5, 12)
    h = L.split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(h, x.view(2, 5, 3, 4).transpose(1, 2))
    y = L.merge_heads(h)
    assert y.is_contiguous() and torch.equal(y, x)
    assert torch.equal(L.merge_heads(h), h.transpose(1, 2).reshape(2, 5, 12))
    with pytest.raises(ValueError, match="divisible"):
        L.split_heads(x, 5)


# --------------------------------------------------------------------------------------
# Multi-head self-attention

def mha_pair(d_model=32, n_heads=4):
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_(0, 0.1)  # torch initialises the biases to zero; test them too
        ref.out_proj.bias.normal_(0, 0.1)
    ours = L.MultiHeadSelfAttention(d_model, n_heads).eval()
    wq, wk, wv = ref.in_proj_weight.chunk(3)  # torch packs q, k, v into one (3C, C) matrix
    bq, bk, bv = ref.in_proj_bias.chunk(3)
    ours.load_state_dict({
        "query.weight": wq, "query.bias": bq, "key.weight": wk, "key.bias": bk,
        "value.weight": wv, "value.bias": bv,
        "out.weight": ref.out_proj.weight, "out.bias": ref.out_proj.bias,
    })
    return ours, ref


def test_mhsa_matches_nn_MultiheadAttention():
    ours, ref = mha_pair()
    x = torch.randn(3, 7, 32)
    y, w = ours(x, return_weights=True)
    y_ref, w_ref = ref(x, x, x, need_weights=True, average_attn_weights=False)
    close(y, y_ref)
    close(w, w_ref)
    assert w.shape == (3, 4, 7, 7)
    close(ours(x), y)


def test_mhsa_with_padding_and_causal_masks():
    ours, ref = mha_pair()
    x = torch.randn(2, 6, 32)
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    # torch.nn.MultiheadAttention's bool masks mean the OPPOSITE of ours (and of
    # F.scaled_dot_product_attention's): True there = "ignore this key". Hence the ~.
    y_ref, _ = ref(x, x, x, key_padding_mask=~am.bool())
    close(ours(x, mask=L.padding_mask(am)), y_ref)
    causal = L.causal_mask(6)
    y_ref, _ = ref(x, x, x, key_padding_mask=~am.bool(), attn_mask=~causal)
    close(ours(x, mask=L.padding_mask(am) & causal), y_ref)


def test_mhsa_structure_and_errors():
    m = L.MultiHeadSelfAttention(32, 4, bias=False)
    assert sorted(k for k, _ in m.named_parameters()) == ["key.weight", "out.weight", "query.weight", "value.weight"]
    assert L.MultiHeadSelfAttention(32, 4).head_dim == 8
    with pytest.raises(ValueError, match="divisible"):
        L.MultiHeadSelfAttention(30, 4)


def test_mhsa_gradients_match_torch():
    ours, ref = mha_pair()
    x = torch.randn(2, 5, 32, requires_grad=True)
    up = torch.randn(2, 5, 32)
    gx, = torch.autograd.grad((ours(x) * up).sum(), x)
    gx_ref, = torch.autograd.grad((ref(x, x, x)[0] * up).sum(), x)
    close(gx, gx_ref, atol=1e-5)


# --------------------------------------------------------------------------------------
# Feed-forward

@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_feed_forward_matches_TransformerEncoderLayer(act):
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, activation=act, batch_first=True).eval()
    ours = L.FeedForward(32, 64, activation=act).eval()
    # the same names as torch's layer: its linear1/linear2 weights load directly
    ours.load_state_dict({k: v for k, v in layer.state_dict().items() if k.startswith(("linear1.", "linear2."))})
    x = torch.randn(3, 5, 32)
    close(ours(x), layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))


def test_feed_forward_activation_names_and_dropout():
    assert L.FeedForward(8, 16, "gelu_new").activation is L.gelu_tanh
    with pytest.raises(ValueError):
        L.FeedForward(8, 16, "nope")
    ff = L.FeedForward(8, 16, dropout=0.5)
    x = torch.randn(4, 3, 8)
    assert not torch.equal(ff(x), ff(x))  # training: dropout is on
    ff.eval()
    assert torch.equal(ff(x), ff(x))


# --------------------------------------------------------------------------------------
# Any device / dtype

def test_everything_runs_on_other_devices_and_dtypes():
    # the meta device has no data: any tensor hard-coded on the CPU would raise here
    x = torch.randn(2, 5, 16, device="meta")
    mask = L.padding_mask(torch.ones(2, 5, device="meta")) & L.causal_mask(5, device="meta")
    m = L.MultiHeadSelfAttention(16, 4).to("meta").train()
    assert m(x, mask).device.type == "meta"
    assert L.FeedForward(16, 32, dropout=0.1).to("meta")(x).device.type == "meta"
    assert L.layer_norm(x, None, None).device.type == "meta"
    assert L.softmax(x).device.type == "meta"
    x64 = torch.randn(2, 5, 16, dtype=torch.float64)
    for fn in (L.gelu, L.gelu_tanh, L.relu, L.softmax, lambda t: L.dropout(t, 0.1),
               lambda t: L.layer_norm(t, None, None)):
        assert fn(x64).dtype == torch.float64
    mha = L.MultiHeadSelfAttention(16, 4).double()
    assert mha(x64, L.causal_mask(5)).dtype == torch.float64


# --------------------------------------------------------------------------------------
# Teaching guarantee: built from primitives, not from the shortcuts it mirrors

# an attribute access ending in one of these, reached from torch / nn / F (or any object
# that is not `self`), is a shortcut; `self.dropout` and our own functions by name are fine
SHORTCUTS = {"linear", "embedding", "layer_norm", "gelu", "relu", "softmax", "log_softmax",
             "dropout", "scaled_dot_product_attention", "multi_head_attention_forward",
             "MultiheadAttention", "Linear", "Embedding", "LayerNorm", "GELU", "ReLU", "Dropout",
             "Softmax", "functional", "rms_norm", "RMSNorm"}


def shortcuts_used(source: str) -> list[str]:
    """Dotted names in ``source``'s code (not its docstrings or comments) that reach a shortcut."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in SHORTCUTS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id == "self"):
                found.append(ast.unparse(node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [n for n in names if "functional" in n]
    return found


def test_layers_do_not_call_torch_shortcuts():
    assert shortcuts_used(inspect.getsource(L)) == []


@pytest.mark.parametrize("snippet", [
    "y = F.linear(x, w)", "y = torch.nn.functional.layer_norm(x, (4,))", "y = F.gelu(x)",
    "y = torch.softmax(x, -1)", "y = x.softmax(-1)", "y = F.scaled_dot_product_attention(q, k, v)",
    "m = nn.MultiheadAttention(8, 2)", "y = F.dropout(x, 0.1)", "y = torch.relu(x)",
    "import torch.nn.functional as F", "from torch.nn import functional",
])
def test_the_shortcut_check_has_teeth(snippet):
    assert shortcuts_used(snippet), snippet
    # while our own names, `self.dropout` and docstrings that *mention* shortcuts pass
    assert shortcuts_used('"""like F.softmax"""\ny = softmax(x)\nz = self.dropout(y)\n# F.gelu') == []


# --------------------------------------------------------------------------------------
# RMSNorm and ALiBi (the references of chapter 02's stretch exercises)

def test_rms_norm_matches_F_rms_norm():
    for shape, eps in [((2, 3, 8), 1e-6), ((5, 64), 1e-5), ((7,), 1e-3)]:
        x = torch.randn(*shape) * 4 + 1
        w = torch.randn(shape[-1])
        close(L.rms_norm(x, w, eps), F.rms_norm(x, (shape[-1],), w, eps), atol=1e-6, rtol=1e-6)
        close(L.rms_norm(x, None, eps), F.rms_norm(x, (shape[-1],), None, eps), atol=1e-6, rtol=1e-6)
    # no centring: a constant row normalises to ones (LayerNorm would give zeros)
    close(L.rms_norm(torch.full((2, 4), 3.0)), torch.ones(2, 4), atol=1e-6)
    assert torch.all(L.rms_norm(torch.zeros(3, 5)) == 0)  # eps keeps 0 / 0 away


def test_RMSNorm_module_matches_nn_RMSNorm():
    ours, theirs = L.RMSNorm(16, eps=1e-5), nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16))
    theirs.load_state_dict(ours.state_dict())  # same name and shape: weight (16,)
    x = torch.randn(2, 5, 16)
    close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)
    assert [n for n, _ in ours.named_parameters()] == ["weight"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rms_norm_half_types_compute_in_float32(dtype):
    x, w = torch.randn(4, 768) * 3, torch.randn(768)
    ours = L.rms_norm(x.to(dtype), w.to(dtype))
    assert ours.dtype == dtype
    step = torch.finfo(dtype).eps * L.rms_norm(x, w).abs().max()
    assert (ours.float() - L.rms_norm(x, w)).abs().max() <= step
    assert (ours.float() - F.rms_norm(x.to(dtype), (768,), w.to(dtype), 1e-6).float()).abs().max() <= step


def test_rms_norm_gradients_match_torch():
    x, w = torch.randn(3, 4, 10), torch.randn(10)
    up = torch.randn(3, 4, 10)
    for a, b in zip(grads(lambda x, w: L.rms_norm(x, w, 1e-6), [x, w], up),
                    grads(lambda x, w: F.rms_norm(x, (10,), w, 1e-6), [x, w], up)):
        close(a, b, atol=1e-5, rtol=1e-5)


def test_alibi_slopes_are_the_papers_and_blooms():
    assert L.alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    assert L.alibi_slopes(4).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    assert L.alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    with pytest.raises(ValueError):
        L.alibi_slopes(0)
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for n in range(1, 65):
        close(L.alibi_slopes(n), bloom._get_alibi_slopes(n, "cpu"), atol=0, rtol=1e-6)


def test_alibi_bias_values_and_kv_cache_offset():
    bias = L.alibi_bias(2, 3)  # (H, T, T): 0 on the diagonal, -slope per step back
    assert bias.shape == (2, 3, 3) and bias.dtype == torch.float32
    slopes = L.alibi_slopes(2)
    close(bias[:, 2, 0], -2 * slopes)
    assert torch.all(torch.diagonal(bias, dim1=1, dim2=2) == 0)
    # with a cache the queries are the last positions: the last rows of the full table
    assert torch.equal(L.alibi_bias(4, 2, 7), L.alibi_bias(4, 7)[:, -2:, :])
    with pytest.raises(ValueError):
        L.alibi_bias(2, 5, 3)
    assert L.alibi_bias(4, 3, device="meta").device.type == "meta"


def test_alibi_attention_equals_blooms_alibi():
    """BLOOM adds slope * key position (a row constant away from ours): same weights after the softmax."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    B, H, T, D = 2, 6, 7, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    theirs_bias = bloom.build_alibi_tensor(torch.ones(B, T, dtype=torch.long), H, torch.float32).view(B, H, 1, T)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    causal = L.causal_mask(T)
    ours = L.softmax((scores + L.alibi_bias(H, T)).masked_fill(~causal, float("-inf")))
    theirs = L.softmax((scores + theirs_bias).masked_fill(~causal, float("-inf")))
    close(ours, theirs, atol=1e-6)
    # and it is what F.scaled_dot_product_attention computes with the bias as a float mask
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=L.alibi_bias(H, T).masked_fill(~causal, float("-inf")))
    close(ours @ v, sdpa, atol=1e-5)
