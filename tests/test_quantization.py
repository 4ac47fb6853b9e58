"""course_lib.quantization (chapter 07): the reference math, PyTorch's int8/int4 CPU kernels against it,
the layers' state_dict, whole models (quantize_model, load_model(quantize=), saving and reloading).

The tolerances are derived, not guessed: the fast path rounds its input to bfloat16 and its
output comes back rounded to bfloat16 (8 significant bits, unit roundoff 2**-8), so it is
compared with the exact (float64) product of the *bfloat16-rounded* input and the
dequantized weight, allowing one bfloat16 rounding of the result plus float32 accumulation.
Quality thresholds on the shipped tiny GPT-2 and on MiniLM were measured first (values in
the comments) and set with a margin.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from course_lib import layers, load_model, load_tokenizer
from course_lib import quantization as Q
from course_lib.checkpoint import CheckpointError, CheckpointReader, CorruptCheckpointError, checkpoint_state_dict
from course_lib.corpus import corpus_text
from course_lib.models.encoder import BertForMaskedLM, EncoderConfig, RobertaForMaskedLM, mean_pooling
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel
from course_lib.quantization import (QuantEmbedding, QuantLinear, Scheme, TiedQuantHead, dequantize_int4,
                                     dequantize_int8, fake_quantize, group_rows, int4_from_kernel_layout,
                                     int4_kernel_layout, int4_kernel_layout_rows, model_nbytes, pack_int4,
                                     padded_rows, parse_scheme, quantize_int4, quantize_int8, quantize_model,
                                     reference_path, relative_error, sqnr_db, unpack_int4)
from helpers import randomize_

SCHEMES = ["int8", "int8-tensor", "int4-sym", "int4-g64-sym", "int4-g128-sym", "int4", "int4-g128"]
BF16_U = 2.0 ** -8  # bfloat16's unit roundoff: 8 significant bits, |round(y) - y| <= 2**-8 |y|
F32_U = 2.0 ** -24


def gaussian(rows: int, cols: int, seed: int = 0, outliers: int = 0, std: float = 0.02) -> torch.Tensor:
    """Weights like a trained matrix's: N(0, std), plus ``outliers`` entries 30 std large."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * std
    if outliers:
        idx = torch.randperm(rows * cols, generator=g)[:outliers]
        w.view(-1)[idx] = 30 * std * torch.sign(torch.randn(outliers, generator=g))
    return w


def per_element(scale: torch.Tensor, cols: int) -> torch.Tensor:
    """A (N,) or (N, G) scale repeated to (N, K), one value per weight."""
    scale = scale.float()
    if scale.dim() == 0:
        return scale.expand(1, cols)
    if scale.dim() == 1:
        return scale[:, None].expand(-1, cols)
    return scale.repeat_interleave(cols // scale.shape[1], dim=1)


def int4_pack_op():
    """PyTorch's own int4 packing op, or a clean skip on a PyTorch without it."""
    if not hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        pytest.skip(f"torch {torch.__version__} has no aten._convert_weight_to_int4pack_for_cpu")
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu


def skip_unless_kernel(layer, x):
    if not layer.uses_kernel(x):
        pytest.skip(f"no {layer.scheme} CPU kernel in torch {torch.__version__}: nothing to compare")


def assert_one_bf16_rounding(fast: torch.Tensor, x: torch.Tensor, w: torch.Tensor, what: str) -> None:
    """``fast`` is ``x @ w.T`` from a kernel that reads bfloat16(x), accumulates in float32 and rounds the
    result to bfloat16 once. Against the exact product ``exact`` of bfloat16(x) and w (float64):
    |fast - exact| <= 2**-8 |exact| (one bfloat16 rounding) + K 2**-24 (|x| @ |w|.T) (float32 sums).
    Measured over test_fast_path_equals_reference: the worst |Δ| is 0.98 of this bound; the first term alone
    would be exceeded only where cancellation makes |exact| tiny."""
    xb = x.to(torch.bfloat16).double().reshape(-1, x.shape[-1])
    exact = xb @ w.double().T
    bound = BF16_U * exact.abs() + x.shape[-1] * F32_U * (xb.abs() @ w.double().abs().T)
    excess = (fast.double().reshape(exact.shape) - exact).abs() / bound
    assert excess.max() <= 1.0, f"{what}: |fast - exact| is {excess.max():.3f} x the bfloat16 rounding bound"


# ------------------------------------------------------------------------------------------------ schemes

@pytest.mark.parametrize("text, expected", [
    ("int8", Scheme(8, "channel")),
    ("int8-channel", Scheme(8, "channel")),
    ("int8-tensor", Scheme(8, "tensor")),
    ("int4", Scheme(4, "group", 32, True)),  # the default int4: groups of 32 with a zero point
    ("int4-g32", Scheme(4, "group", 32, True)),
    ("int4-g64", Scheme(4, "group", 64, True)),
    ("int4-g128", Scheme(4, "group", 128, True)),
    ("int4-zp", Scheme(4, "group", 32, True)),  # "-zp" names the default explicitly
    ("int4-g128-zp", Scheme(4, "group", 128, True)),
    ("int4-sym", Scheme(4, "group", 32, False)),
    ("int4-g64-sym", Scheme(4, "group", 64, False)),
    ("int4-g128-sym", Scheme(4, "group", 128, False)),
    ("  INT4-G64-SYM ", Scheme(4, "group", 64, False)),  # case and surrounding blanks do not matter
])
def test_parse_scheme(text, expected):
    scheme = parse_scheme(text)
    assert scheme == expected
    assert parse_scheme(scheme) is scheme  # a Scheme passes through
    assert parse_scheme(scheme.name) == scheme and str(scheme) == scheme.name  # the name round trips
    assert scheme.qmax == (127 if scheme.bits == 8 else 7)


def test_scheme_names():
    assert [parse_scheme(s).name for s in SCHEMES] == ["int8", "int8-tensor", "int4-g32-sym", "int4-g64-sym",
                                                       "int4-g128-sym", "int4-g32", "int4-g128"]
    assert parse_scheme("int4-zp").name == "int4-g32"


@pytest.mark.parametrize("bad, message", [
    ("int9", r"scheme 'int9' is not known: use 'int8'"),
    ("int16", "is not known"),
    ("fp16", "is not known.*cast_model or dtype="),
    ("", "is not known"),
    ("int4-g", "is not known"),
    ("int4-tensor", "int4 is always group-wise"),
    ("int8-g32", "groups and zero points are int4 options"),
    ("int8-zp", "groups and zero points are int4 options"),
    ("int8-sym", "groups and zero points are int4 options"),
    ("int4-zp-sym", "is not known"),
    ("int4-sym-zp", "is not known"),
    ("int4-sym-g64", "is not known"),
    ("int4-g33", "group size must be an even number"),
    ("int4-g0", "group size must be an even number"),
])
def test_parse_scheme_refuses_bad_names_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_scheme(bad)


# ------------------------------------------------------------------------------------------------ int8 math

@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_absmax_error_is_at_most_half_a_step(per_channel):
    w = gaussian(64, 96, seed=1, outliers=5)
    q, scale = quantize_int8(w, per_channel)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.bfloat16 and scale.shape == ((64,) if per_channel else ())
    assert int(q.abs().max()) == 127  # the largest |w| (of each row, per channel) maps to 127
    assert int(q.min()) >= -127  # symmetric: -128 is never used
    if per_channel:
        assert torch.equal(q.abs().amax(dim=1), torch.full((64,), 127, dtype=torch.int8))
    step = per_element(scale, 96)  # the scale as stored (bfloat16), not max|w| / 127
    err = (w - dequantize_int8(q, scale)).abs()
    assert bool((err <= step / 2 * (1 + 1e-5)).all()), f"max err/step {(err / step).max():.4f} > 0.5"
    assert dequantize_int8(q, scale, torch.bfloat16).dtype == torch.bfloat16


def test_an_outlier_coarsens_only_its_own_row_per_channel():
    w = gaussian(16, 64, seed=2)
    spiked = w.clone()
    spiked[3, 10] = 1.0  # 50 std
    q0, s0 = quantize_int8(w)
    q1, s1 = quantize_int8(spiked)
    others = torch.arange(16) != 3
    assert torch.equal(s0[others], s1[others]) and torch.equal(q0[others], q1[others])
    assert s1[3] > 10 * s0[3]
    # per tensor the one outlier sets everybody's step: the other rows' error grows ~(1.0 / max|w|) times
    qt, st = quantize_int8(spiked, per_channel=False)
    per_tensor = relative_error(w[others], dequantize_int8(qt, st)[others])
    per_channel = relative_error(w[others], dequantize_int8(q1, s1)[others])
    assert per_tensor > 10 * per_channel  # measured: 0.118 vs 0.0060 (~20x)


def test_zero_rows_get_scale_one_and_exact_zeros():
    w = gaussian(4, 32, seed=3)
    w[1] = 0
    q, scale = quantize_int8(w)
    assert scale[1].item() == 1.0 and not bool((scale == 0).any())
    assert not bool(q[1].any())
    assert bool((dequantize_int8(q, scale)[1] == 0).all())
    qt, st = quantize_int8(torch.zeros(3, 5), per_channel=False)
    assert st.item() == 1.0 and not bool(qt.any())
    q4, s4, _ = quantize_int4(torch.zeros(2, 64), 32)
    assert bool((s4 == 1).all()) and bool((dequantize_int4(q4, s4) == 0).all())
    q4, s4, z4 = quantize_int4(torch.zeros(2, 64), 32, zero_point=True)
    assert bool((s4 == 1).all()) and bool((dequantize_int4(q4, s4, z4) == 0).all())


# ------------------------------------------------------------------------------------------------ int4 math

@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_symmetric_error_per_group(group):
    w = gaussian(24, 256, seed=4, outliers=6)
    q, scale, zero = quantize_int4(w, group)
    assert zero is None
    assert q.dtype == torch.uint8 and q.shape == w.shape
    assert scale.dtype == torch.bfloat16 and scale.shape == (24, 256 // group)
    assert int(q.min()) >= 1 and int(q.max()) <= 15  # (q - 8) in [-7, 7]: level 0 is unused
    grouped = group_rows(q.int() - 8, group)
    assert torch.equal(grouped.abs().amax(-1), torch.full((24, 256 // group), 7))  # each group's max|w| -> ±7
    torch.testing.assert_close(scale.float(), (group_rows(w, group).abs().amax(-1) / 7).bfloat16().float(),
                               rtol=0, atol=0)
    err = (w - dequantize_int4(q, scale)).abs()
    step = per_element(scale, 256)
    assert bool((err <= step / 2 * (1 + 1e-5)).all()), f"max err/step {(err / step).max():.4f}"


@pytest.mark.parametrize("group", [32, 128])
def test_int4_zero_point_error_per_group(group):
    w = gaussian(24, 256, seed=5, outliers=6) + 0.01  # shifted: asymmetric groups, still straddling 0
    q, scale, zero = quantize_int4(w, group, zero_point=True)
    assert q.dtype == zero.dtype == torch.uint8 and scale.dtype == torch.bfloat16
    assert zero.shape == scale.shape == (24, 256 // group)
    assert int(q.max()) <= 15 and int(zero.max()) <= 15
    lo, hi = group_rows(w, group).amin(-1), group_rows(w, group).amax(-1)
    assert bool(((lo < 0) & (hi > 0)).all())  # every group straddles 0, as trained weights' groups do
    torch.testing.assert_close(scale.float(), ((hi - lo) / 15).bfloat16().float(), rtol=0, atol=0)
    # all 16 levels are used within the group's range: the min maps to 0 or 1, the max to 14 or 15
    assert int(group_rows(q.int(), group).amin(-1).max()) <= 1 and int(group_rows(q.int(), group).amax(-1).min()) >= 14
    step = per_element(scale, 256)
    unclamped = torch.round(w / step) + per_element(zero, 256)
    inside = (unclamped >= 0) & (unclamped <= 15)
    err = (w - dequantize_int4(q, scale, zero)).abs()
    assert bool((err[inside] <= step[inside] / 2 * (1 + 1e-5)).all())
    assert bool((err <= step * (1 + 1e-5)).all())  # a clamped end value is off by less than one step
    # zero points use the range better than symmetric levels on these shifted weights
    qs, ss, _ = quantize_int4(w, group)
    assert sqnr_db(w, dequantize_int4(q, scale, zero)) > sqnr_db(w, dequantize_int4(qs, ss))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_int4_zero_point_group_of_one_sign(sign):
    """The range is widened to include 0: without it the zero point, clamped to 0..15, cannot reach a group
    of one sign, and every value collapsed onto one level (max error 0.997 here, symmetric: 0.14)."""
    w = sign * torch.linspace(1.0, 2.0, 32)[None]
    q, scale, zero = quantize_int4(w, 32, zero_point=True)
    assert zero.item() == (0 if sign > 0 else 15)  # 0.0 is the lowest (or highest) level
    err = (w - dequantize_int4(q, scale, zero)).abs().max()
    qs, ss, _ = quantize_int4(w, 32)
    assert err <= scale.float().max() / 2 * (1 + 1e-5)
    assert err <= (w - dequantize_int4(qs, ss)).abs().max()  # never worse than symmetric (max error 0.14)


def test_pack_int4_nibble_order_by_hand():
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 8, 7]], dtype=torch.uint8)
    packed = pack_int4(q)
    # byte i = q[2i] | q[2i + 1] << 4
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x78]] and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match="even number of columns, got 3"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


def test_pack_unpack_round_trip():
    q = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_int4(q)
    assert packed.shape == (3, 5, 32)
    assert torch.equal(unpack_int4(packed), q)
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)[None]
    assert torch.equal(pack_int4(unpack_int4(every_byte)), every_byte)


def test_group_rows():
    w = torch.arange(12.0).reshape(2, 6)
    assert group_rows(w, 3).tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    with pytest.raises(ValueError, match="rows of 6 values cannot be cut into groups of 4"):
        group_rows(w, 4)
    with pytest.raises(ValueError, match="rows of 100 values cannot be cut into groups of 32"):
        quantize_int4(torch.zeros(2, 100), 32)
    with pytest.raises(ValueError, match="cannot be cut into groups of 32"):
        QuantLinear(100, 16, scheme="int4")


def test_relative_error_and_sqnr_by_hand():
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5
    assert relative_error(w, w) == 0.0 and sqnr_db(w, w) == math.inf
    assert relative_error(w, torch.tensor([3.0, 4.5])) == pytest.approx(0.1)  # 0.5 / 5
    assert sqnr_db(w, torch.tensor([3.0, 4.5])) == pytest.approx(20.0)
    assert sqnr_db(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.01])) == pytest.approx(40.0)
    assert relative_error(w, torch.zeros(2)) == pytest.approx(1.0) and sqnr_db(w, torch.zeros(2)) == pytest.approx(0)


def test_fake_quantize_sqnr_order_on_gaussian_weights_with_outliers():
    w = gaussian(256, 512, seed=6, outliers=20)
    schemes = ["int8", "int8-tensor", "int4-sym", "int4-g64-sym", "int4-g128-sym", "int4", "int4-g64", "int4-g128"]
    sqnr = {s: sqnr_db(w, fake_quantize(w, s)) for s in schemes}
    # measured: int8 34.4, int8-tensor 23.9; symmetric int4 g32 19.1, g64 17.5, g128 15.7;
    # zero point g32 21.3, g64 19.8, g128 18.1 dB
    assert sqnr["int8"] > sqnr["int8-tensor"] + 6  # the outliers coarsen one shared scale
    assert sqnr["int8"] > sqnr["int4"] + 12  # ~6 dB per bit
    assert sqnr["int4-sym"] > sqnr["int4-g64-sym"] > sqnr["int4-g128-sym"]  # smaller groups, finer steps
    assert sqnr["int4"] > sqnr["int4-g64"] > sqnr["int4-g128"]
    for group in ("", "-g64", "-g128"):  # 16 levels over each group's own range beat 15 symmetric ones
        assert sqnr[f"int4{group}"] > sqnr[f"int4{group}-sym"]
    out = fake_quantize(w.bfloat16(), "int4")
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fake_quantize_is_what_a_plain_layer_computes_with(scheme):
    w = gaussian(48, 256, seed=7, outliers=3)
    layer = QuantLinear(256, 48, False, scheme, kernel_layout=False)
    layer.quantize_(lambda a, b: w[a:b])
    assert layer.layout == "plain"
    assert torch.equal(layer.dequantize(), fake_quantize(w, scheme))



# ------------------------------------------------------------------- past the chapter: a learned clip, W8A8 (stretch)

def test_clip_with_ratio_one_is_plain_symmetric_int4():
    w = gaussian(9, 128, seed=3, outliers=5)
    q, scale = Q.quantize_int4_clipped(w, 32, (1.0,))
    q_ref, scale_ref, _ = quantize_int4(w, 32)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)


def test_clip_search_errors_by_hand():
    """Every candidate scale and error, one group and one ratio at a time in Python floats."""
    w = gaussian(3, 16, seed=4, outliers=2)
    w[1, 8:] = 0.0  # an all-zero group
    ratios = (1.0, 0.8, 0.55)
    scales, errors = Q.clip_search_errors(w, 8, ratios)
    assert scales.shape == errors.shape == (3, 3, 2) and scales.dtype == torch.bfloat16
    assert errors.dtype == torch.float64
    for r_i, r in enumerate(ratios):
        for i in range(3):
            for j in range(2):
                group = w[i, 8 * j:8 * j + 8]
                s = float((group.abs().max() * r / 7).to(torch.bfloat16)) or 1.0
                assert float(scales[r_i, i, j]) == s
                want = sum((v - max(-7, min(7, round(v / s))) * s) ** 2 for v in group.double().tolist())
                assert math.isclose(float(errors[r_i, i, j]), want, rel_tol=1e-12, abs_tol=1e-18)
    assert bool((scales[:, 1, 1] == 1).all()) and bool((errors[:, 1, 1] == 0).all())


@pytest.mark.parametrize("group", [8, 32, 128])
def test_clipped_int4_picks_the_best_ratio_of_each_group(group):
    w = gaussian(17, 256, seed=group, outliers=6)
    w[3, :group] = 0.0  # an all-zero group: scale 1, every value the zero level
    scales, errors = Q.clip_search_errors(w, group)
    q, scale = Q.quantize_int4_clipped(w, group)
    assert q.dtype == torch.uint8 and q.shape == w.shape and scale.shape == (17, 256 // group)
    assert int(q.min()) >= 1 and int(q.max()) <= 15
    assert float(scale[3, 0]) == 1.0 and bool((q[3, :group] == 8).all())
    best = errors.argmin(0)  # (N, G), the first of equal minima
    assert torch.equal(scale, scales.gather(0, best.unsqueeze(0))[0])
    w_hat = dequantize_int4(q, scale)  # the stored format is plain symmetric int4
    got = (group_rows(w.double() - w_hat.double(), group) ** 2).sum(-1)
    torch.testing.assert_close(got, errors.min(0).values, rtol=1e-9, atol=1e-15)
    assert bool((got <= errors[0] + 1e-15).all())  # never worse than plain absmax (ratio 1), group by group
    assert bool((best > 0).any())  # some groups clip
    w = gaussian(17, 256, seed=group)  # without outliers, whose groups dominate the error and rarely clip
    plain = fake_quantize(w, f"int4-g{group}-sym")
    # measured relative error, plain -> clipped: 0.0708 -> 0.0682 (g 8), 0.0957 -> 0.0900 (g 32),
    # 0.1180 -> 0.1060 (g 128): the larger the group, the more a learned clip is worth
    clipped = dequantize_int4(*Q.quantize_int4_clipped(w, group))
    assert relative_error(w, clipped) < 0.985 * relative_error(w, plain)


def test_clipped_int4_runs_in_the_int4_kernel():
    """The clipped scales are an ordinary symmetric int4 format: PyTorch's kernel reads them unchanged."""
    w = gaussian(48, 256, seed=11, outliers=3)
    q, scale = Q.quantize_int4_clipped(w, 32)
    layer = QuantLinear(256, 48, False, "int4-g32-sym")
    layer.load_state_dict({"weight": pack_int4(q), "weight_scale": scale})
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        skip_unless_kernel(layer, x)
        fast = layer(x)
    assert torch.equal(layer.dequantize(), dequantize_int4(q, scale))
    assert_one_bf16_rounding(fast, x, dequantize_int4(q, scale), "clipped int4")


def test_per_token_activation_scales():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2)) * torch.tensor([[0.01], [1], [30], [1], [2]])
    x[3] = 0.0  # a padding token
    q, scale = Q.quantize_per_token(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (5, 1)
    assert float(scale[3]) == 1.0 and bool((q[3] == 0).all())
    peak = x.abs().amax(1)
    rows = [0, 1, 2, 4]
    assert bool((q[rows].abs().amax(1) == 127).all())  # every token's largest |x| is a full-scale level
    torch.testing.assert_close(scale[rows, 0], peak[rows] / 127, rtol=0, atol=0)
    assert bool(((x - q.float() * scale).abs() <= scale / 2 * (1 + 1e-6)).all())  # half a step, per token


def test_int8_matmul_is_exact_in_int32():
    g = torch.Generator().manual_seed(5)
    q_x = torch.randint(-127, 128, (7, 4096), generator=g, dtype=torch.int8)
    q_w = torch.randint(-127, 128, (9, 4096), generator=g, dtype=torch.int8)
    q_x[0], q_w[0] = 127, -127  # 4096 x 127 x 127 = 66 million: far past int16, well inside int32
    acc = Q.int8_matmul(q_x, q_w)
    assert acc.dtype == torch.int32 and acc.shape == (7, 9)
    assert torch.equal(acc.long(), q_x.long() @ q_w.long().T) and int(acc[0, 0]) == -4096 * 127 * 127
    if hasattr(torch, "_int_mm"):  # PyTorch's own int8 x int8 -> int32 product
        assert torch.equal(acc, torch._int_mm(q_x, q_w.T.contiguous()))


def test_w8a8_linear_is_the_rescaled_integer_product():
    w = gaussian(40, 128, seed=6, outliers=2)
    q_w, w_scale = quantize_int8(w)
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(7))
    x[:, 5] *= 20  # an outlier feature, as LLM.int8() found in large models
    y = Q.w8a8_linear(x, q_w, w_scale)
    q_x, x_scale = Q.quantize_per_token(x)
    exact = (q_x.double() @ q_w.double().T) * x_scale.double() * w_scale.double()
    assert y.dtype == torch.float32 and y.shape == (6, 40)
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=0)
    weight_only = x @ dequantize_int8(q_w, w_scale).T
    # measured: 0.0240 weight-only, 0.0339 W8A8 (the outlier feature coarsens every token's steps)
    assert relative_error(x @ w.T, weight_only) < relative_error(x @ w.T, y) < 0.045


def test_per_token_scales_contain_an_outlier_token():
    w = gaussian(32, 64, seed=8)
    q_w, w_scale = quantize_int8(w)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(9))
    x[2] *= 100  # one token 100x the others
    y = Q.w8a8_linear(x, q_w, w_scale)
    peak = x.abs().amax()  # one scale for the whole x instead
    per_tensor = (torch.round(x / (peak / 127)) * (peak / 127)) @ dequantize_int8(q_w, w_scale).T
    others = [i for i in range(8) if i != 2]
    reference = x[others] @ w.T
    # measured: 0.0079 per token, 0.50 per tensor for the other tokens
    assert relative_error(reference, y[others]) < 0.02 and relative_error(reference, per_tensor[others]) > 0.3


# ---------------------------------------------------------------------------------------------- the int4 kernel layout

def test_int4_kernels_are_found_when_pytorch_has_them():
    ops = torch.ops.aten
    if hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu"):
        assert Q.int4_kernel_available()  # else the layout check fails and every int4 layer silently falls back
    assert Q.int8_kernel_available() == hasattr(torch, "_weight_int8pack_mm")


@pytest.mark.parametrize("n", [16, 48, 64, 80, 144, 208])
@pytest.mark.parametrize("k", [32, 64, 96, 256])
def test_int4_kernel_layout_is_pytorchs(n, k):
    convert = int4_pack_op()
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n * 1000 + k))
    ours = int4_kernel_layout(q)
    assert torch.equal(ours, convert(q.int(), 1))
    assert ours.shape == (n, k // 2) and ours.dtype == torch.uint8
    assert torch.equal(int4_from_kernel_layout(ours, k), q)


@pytest.mark.parametrize("n", [48, 80, 208])
def test_int4_kernel_layout_rows(n):
    k = 64
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    packed = int4_kernel_layout(q)
    full = n // 64 * 64
    ids = torch.tensor([i for i in (0, 1, 31, 32, 33, 63, 64, 95, 96, 127, 128, 191) if i < full]
                       + list(range(full, n)) + [n - 1, 0, n - 1])  # full blocks, the whole tail, repeats
    assert bool((ids >= full).any()) and (full == 0 or bool((ids < full).any()))
    assert torch.equal(int4_kernel_layout_rows(packed, ids, k), q[ids])
    assert int4_kernel_layout_rows(packed, ids[:0], k).shape == (0, k)


def test_padded_rows():
    assert [padded_rows(n) for n in (0, 1, 15, 16, 17, 50, 4099, 50257)] == [0, 16, 16, 16, 32, 64, 4112, 50272]


# ------------------------------------------------------------------------------------------------ QuantLinear

def quant_linear(scheme: str, n: int, k: int = 256, bias: bool = True, seed: int = 0
                 ) -> tuple[QuantLinear, layers.Linear]:
    torch.manual_seed(seed)
    linear = layers.Linear(k, n, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(gaussian(n, k, seed=seed, outliers=4))
        if bias:
            linear.bias.normal_(0, 0.1)
    return QuantLinear.from_linear(linear, scheme), linear


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [50, 4096 + 3])  # neither a multiple of 16: the int4 layout pads rows
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 20)])  # M = 1 (a decoding step), 15 and 80 rows
def test_fast_path_equals_reference(scheme, n, shape):
    layer, linear = quant_linear(scheme, n, bias=False, seed=n)
    x = torch.randn(*shape, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        skip_unless_kernel(layer, x)
        if layer.scheme.bits == 4:
            assert layer.layout == "int4-cpu-kernel" and layer.weight.shape == (padded_rows(n), 128)
        fast = layer(x)
        with reference_path():
            assert not layer.uses_kernel(x)
            reference = layer(x)
    assert fast.shape == reference.shape == (*shape, n) and fast.dtype == torch.float32
    w = layer.dequantize()
    assert_one_bf16_rounding(fast, x, w, scheme)
    # the reference path is a plain product, a block of weight rows at a time (blocks of other shapes may
    # round the last bit differently from one big product)
    torch.testing.assert_close(reference, x @ w.T, rtol=1e-6, atol=1e-6)
    # against float32 activations the bfloat16 roundings (input and output, <= 2**-8 each) stay small:
    # measured ||fast - reference|| / ||reference|| = 0.0017 .. 0.0025 for every scheme and shape
    assert relative_error(reference, fast) < 1e-2
    float_y = linear(x).detach()  # the kernel adds (almost) nothing to the weights' own quantization error
    assert relative_error(float_y, fast) <= relative_error(float_y, reference) + 1e-2


@pytest.mark.parametrize("scheme", ["int8", "int4-sym", "int4-g128"])
def test_bias_is_added_in_float_after_the_product(scheme):
    layer, linear = quant_linear(scheme, 50, bias=True)
    x = torch.randn(2, 3, 256)
    with torch.no_grad():
        with_bias = layer(x)
        bias, layer.bias = layer.bias, None
        without = layer(x)
    assert torch.equal(with_bias, without + bias)
    assert torch.equal(bias, linear.bias.detach())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_output_dtype_is_the_input_dtype(scheme):
    layer, _ = quant_linear(scheme, 50, bias=False)
    x = torch.randn(4, 256)
    with torch.no_grad():
        y32, y16 = layer(x), layer(x.bfloat16())
        with reference_path():
            r16 = layer(x.bfloat16())
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16 and r16.dtype == torch.bfloat16
    if layer.uses_kernel(x):  # the kernel sees the same bfloat16 input either way
        assert torch.equal(y16, y32.bfloat16()) and torch.equal(y32, y32.bfloat16().float())
    layer_b, _ = quant_linear(scheme, 50, bias=True)
    layer_b.to(torch.bfloat16)
    with torch.no_grad():
        assert layer_b(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["int8", "int8-tensor", "int4-sym", "int4"])
def test_gradients_flow_through_the_dequantized_weight(scheme):
    layer, _ = quant_linear(scheme, 50, bias=True)
    x = torch.randn(2, 3, 256, requires_grad=True)
    with torch.no_grad():
        assert layer.uses_kernel(x) == (scheme.startswith("int8") or Q.int4_kernel_available())
    assert not layer.uses_kernel(x)  # grad mode and x.requires_grad: the kernels have no backward
    y = layer(x)
    w = layer.dequantize()
    torch.testing.assert_close(y, x.detach() @ w.T + layer.bias, rtol=0, atol=1e-6)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ w, rtol=1e-6, atol=1e-6)
    assert not layer.bias.requires_grad and all(not b.requires_grad for b in layer.buffers())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_non_contiguous_inputs(scheme):
    layer, _ = quant_linear(scheme, 48, k=64)
    big = torch.randn(3, 7, 64)
    with torch.no_grad():
        for x in (big[:, -1:], big[:, :, :64].transpose(0, 1), big.transpose(1, 2).contiguous().transpose(1, 2)):
            torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_non_contiguous_bfloat16_inputs(scheme):
    layer, _ = quant_linear(scheme, 48, k=64)
    big = torch.randn(3, 7, 128).bfloat16()
    with torch.no_grad():
        for x in (big[:, -1:, :64], big[..., ::2], big[:, :, :64].transpose(0, 1)):
            torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)


def test_int8_kernel_with_in_features_not_a_multiple_of_16():
    script = textwrap.dedent("""
        import torch
        from course_lib import quantization as Q
        for k in (24, 100):
            layer = Q.QuantLinear.from_linear(torch.nn.Linear(k, 50), "int8")
            x = torch.randn(3, k, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                fast = layer(x)
                with Q.reference_path():
                    reference = layer(x)
            rel = float((fast - reference).norm() / reference.norm())
            print(k, rel, flush=True)
            assert rel < 1e-2, (k, rel)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stdout,
                                                                         done.stderr[-2000:])


def test_int4_group_sizes_the_kernel_does_not_take():
    layer, _ = quant_linear("int4-g16", 50, k=64)
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = layer(x)
        with reference_path():
            reference = layer(x)
    assert relative_error(reference, y) < 1e-2


def test_quant_embedding_rows_are_the_dequantized_table():
    for scheme in SCHEMES:
        for as_head in (False, True):
            table = layers.Embedding(1000, 128, padding_idx=3)  # 1000 rows: the int4 layout ends in a 48-row tail
            with torch.no_grad():
                table.weight.copy_(gaussian(1000, 128, seed=8, outliers=3))
            emb = QuantEmbedding.from_embedding(table, scheme, as_head=as_head)
            kernel = as_head and emb.scheme.bits == 4 and Q.int4_kernel_available()
            assert emb.layout == ("int4-cpu-kernel" if kernel else "plain"), (scheme, as_head)
            assert emb.padding_idx == 3 and (emb.num_embeddings, emb.embedding_dim) == (1000, 128)
            ids = torch.tensor([[0, 5, 999, 960, 961], [3, 959, 500, 998, 0]])
            rows = emb(ids)
            assert rows.shape == (2, 5, 128) and rows.dtype == torch.float32
            assert torch.equal(rows, emb.dequantize()[ids]), (scheme, as_head)
            if not (kernel and emb.scheme.zero_point):  # kernel zero points are rounded: see the next test
                assert torch.equal(emb.dequantize(), fake_quantize(table.weight.detach(), scheme)), (scheme, as_head)
            emb.half()
            assert emb(ids).dtype == torch.float16 and emb.weight_scale.dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["int4", "int4-g128"])
def test_zero_points_in_the_kernel_layout_round_within_a_thirty_second_of_a_step(scheme):
    """The kernel takes zero as a bfloat16 offset (8 - zero_point) * scale: rounding it to 8 significant bits
    moves a weight by at most 2**-8 * 8 * scale = scale / 32 (the quantization error itself is scale / 2)."""
    w = gaussian(64, 256, seed=9, outliers=8)
    kernel = QuantLinear(256, 64, False, scheme)
    kernel.quantize_(lambda a, b: w[a:b])
    if kernel.layout == "plain":
        pytest.skip("no int4 kernel layout in this torch")
    q, scale, zero = quantize_int4(w, parse_scheme(scheme).group_size, zero_point=True)
    plain = dequantize_int4(q, scale, zero)
    assert bool(((kernel.dequantize() - plain).abs() <= per_element(scale, 256) / 32).all())
    state = kernel.state_dict()  # ... while the saved integers are recovered exactly
    assert torch.equal(state["weight"], pack_int4(q)) and torch.equal(state["weight_zero_point"], zero)
    assert torch.equal(state["weight_scale"], scale)


# ------------------------------------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_is_in_the_plain_layout(scheme):
    layer, linear = quant_linear(scheme, 50, k=256)
    s = parse_scheme(scheme)
    state = layer.state_dict()
    if s.bits == 8:
        expected = {"weight": ((50, 256), torch.int8), "weight_scale": ((50,) if s.granularity == "channel" else (),
                                                                        torch.bfloat16)}
    else:
        g = 256 // s.group_size
        expected = {"weight": ((50, 128), torch.uint8), "weight_scale": ((50, g), torch.bfloat16)}
        if s.zero_point:
            expected["weight_zero_point"] = ((50, g), torch.uint8)
        if Q.int4_kernel_available():  # in memory: the kernel's layout, rows padded to 64, scales and zeros paired
            assert layer.layout == "int4-cpu-kernel"
            assert layer.weight.shape == (64, 128) and layer.weight_scale.shape == (g, 64, 2)
            assert "weight_zero_point" not in dict(layer.named_buffers())
    expected["bias"] = ((50,), torch.float32)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == expected
    w = linear.weight.detach()  # the saved integers are the reference quantization's, whatever the layout
    if s.bits == 8:
        q, scale = quantize_int8(w, s.granularity == "channel")
        assert torch.equal(state["weight"], q) and torch.equal(state["weight_scale"], scale)
    else:
        q, scale, zero = quantize_int4(w, s.group_size, s.zero_point)
        assert torch.equal(state["weight"], pack_int4(q)) and torch.equal(state["weight_scale"], scale)
        if s.zero_point:
            assert torch.equal(state["weight_zero_point"], zero)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_load_state_dict_reproduces_outputs(scheme):
    layer, _ = quant_linear(scheme, 50, k=256, seed=1)
    other, _ = quant_linear(scheme, 50, k=256, seed=2)  # already quantized, maybe in the kernel layout
    state = layer.state_dict()
    x = torch.randn(2, 3, 256)
    with torch.no_grad():
        expected = layer(x)
        with reference_path():
            expected_reference = layer(x)
    for target in (QuantLinear(256, 50, True, scheme), QuantLinear(256, 50, True, scheme, kernel_layout=False), other):
        target.load_state_dict(state)
        assert target.layout == (layer.layout if target.kernel_layout else "plain")
        got = target.state_dict()
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
        with torch.no_grad():
            if target.layout == layer.layout:
                assert torch.equal(target(x), expected)
            with reference_path():
                diff = (target(x) - expected_reference).abs().max()
        assert diff == 0 or parse_scheme(scheme).zero_point  # zero points: rounded in the kernel layout only
    with pytest.raises(RuntimeError, match="weight_scale"):
        QuantLinear(256, 50, True, scheme).load_state_dict({k: v for k, v in state.items() if k != "weight_scale"})


@pytest.mark.parametrize("scheme", ["int8", "int8-tensor", "int4-sym", "int4"])
def test_to_dtype_keeps_scales_in_bfloat16(scheme):
    layer, _ = quant_linear(scheme, 50, k=256)
    before = {k: (v.dtype, tuple(v.shape)) for k, v in layer.named_buffers()}
    assert layer.to(torch.bfloat16) is layer
    assert layer.compute_dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert {k: (v.dtype, tuple(v.shape)) for k, v in layer.named_buffers()} == before
    layer.half()
    assert layer.compute_dtype == torch.float16 and layer.bias.dtype == torch.float16
    assert {k: (v.dtype, tuple(v.shape)) for k, v in layer.named_buffers()} == before
    layer.float()
    assert layer.compute_dtype == torch.float32 and layer.weight_scale.dtype == torch.bfloat16
    with torch.no_grad():
        layer(torch.randn(2, 256))  # still works after the round trip


def test_model_nbytes_counts_the_tied_table_once():
    float_model = load_model("tiny-gpt2")
    wte = float_model.transformer.wte.weight
    assert float_model.lm_head.weight is wte
    float_bytes = model_nbytes(float_model)
    assert float_bytes == sum(p.nbytes for p in float_model.parameters())
    assert float_bytes == sum(t.nbytes for t in float_model.state_dict().values()) - wte.nbytes  # lm_head once
    ratios = {}
    for scheme in ("int8", "int4", "int4-g64", "int4-g128"):
        model = quantize_model(load_model("tiny-gpt2"), scheme)
        tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        assert model_nbytes(model) == sum(t.nbytes for t in tensors.values())
        ratios[scheme] = model_nbytes(model) / float_bytes
    # measured: int8 0.257, int4-g32 0.1604, int4-g64 0.145, int4-g128 0.137 (in memory: the int4 kernel layout
    # keeps a bfloat16 zero offset beside each scale, and LayerNorms/biases stay float32; on GPT-2 124M,
    # where they weigh less, int4-g32 comes to ~0.157)
    assert ratios["int8"] <= 0.27  # the spec's bar
    assert ratios["int4-g64"] <= 0.16 and ratios["int4-g128"] <= 0.16
    assert ratios["int4"] <= 0.165
    int8 = load_model("tiny-gpt2", quantize="int8")  # int8 has no separate layout: memory is the state_dict
    assert model_nbytes(int8) == sum(t.nbytes for t in int8.state_dict().values())


# ------------------------------------------------------------------------------------------------ the tiny GPT-2

@pytest.fixture(scope="module")
def heldout_ids() -> torch.Tensor:
    """(2, 256) token ids of the corpus's held-out split (text the tiny GPT-2 was not trained on)."""
    ids = load_tokenizer("tiny-gpt2").encode(corpus_text("heldout")[:12000]).ids
    assert len(ids) >= 512
    return torch.tensor(ids[:512]).view(2, 256)


@pytest.fixture(scope="module")
def float_logits(heldout_ids) -> torch.Tensor:
    with torch.no_grad():
        return load_model("tiny-gpt2")(heldout_ids)


@pytest.mark.parametrize("scheme", ["int8", "int8-tensor", "int4", "int4-g128-sym"])
def test_quantize_model_equals_quantize_on_load(scheme, heldout_ids):
    after = quantize_model(load_model("tiny-gpt2"), scheme)
    while_loading = load_model("tiny-gpt2", quantize=scheme)
    assert while_loading.quantization == after.quantization == parse_scheme(scheme)
    a, b = after.state_dict(), while_loading.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(after(heldout_ids), while_loading(heldout_ids))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_lm_head_reads_the_quantized_token_table(scheme):
    model = load_model("tiny-gpt2", quantize=scheme)
    wte = model.transformer.wte
    assert isinstance(wte, QuantEmbedding) and isinstance(model.lm_head, TiedQuantHead)
    assert model.lm_head.table is wte and model.lm_head.source == "transformer.wte"
    assert list(model.lm_head.buffers()) == [] and list(model.lm_head.parameters()) == []
    assert not [k for k in model.state_dict() if k.startswith("lm_head")]
    assert sum(1 for m in model.modules() if m is wte) == 1  # the table is a submodule once
    assert wte.layout == ("int4-cpu-kernel" if scheme == "int4" and Q.int4_kernel_available() else "plain")
    for name, module in model.named_modules():
        if isinstance(module, (layers.Linear, layers.Embedding)):
            pytest.fail(f"{name} was left in float")
    h = torch.randn(2, 3, 128)
    with torch.no_grad():
        assert torch.equal(model.lm_head(h), wte.matmul(h))
        with reference_path():
            torch.testing.assert_close(model.lm_head(h), h @ wte.dequantize().T, rtol=0, atol=0)
    twin = copy.deepcopy(model)
    assert twin.lm_head.table is twin.transformer.wte and twin.lm_head.table is not wte


def test_quantize_model_skip_and_float_schemes():
    model = quantize_model(load_model("tiny-gpt2", fast=False), "int8", skip=("transformer.h.0", "transformer.wpe"))
    assert type(model.transformer.h[0].attn.c_attn) is layers.Linear
    assert type(model.transformer.wpe) is layers.Embedding
    assert isinstance(model.transformer.h[1].attn.c_attn, QuantLinear)
    halved = quantize_model(load_model("tiny-gpt2"), "bfloat16")
    assert halved.transformer.wte.weight.dtype == torch.bfloat16
    assert halved.lm_head.weight is halved.transformer.wte.weight
    with pytest.raises(ValueError, match="not known"):
        quantize_model(load_model("tiny-gpt2"), "int3")


@pytest.mark.parametrize("scheme", ["int8", "int8-tensor", "int4", "int4-g128-sym"])
def test_save_pretrained_and_reload(scheme, tmp_path, heldout_ids):
    model = load_model("tiny-gpt2", quantize=scheme)
    folder = model.save_pretrained(tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "course_lib", "scheme": parse_scheme(scheme).name}
    reloaded = load_model(folder)
    assert reloaded.quantization == parse_scheme(scheme)
    assert isinstance(reloaded.lm_head, TiedQuantHead) and reloaded.lm_head.table is reloaded.transformer.wte
    assert reloaded.transformer.wte.layout == model.transformer.wte.layout
    a, b = model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(reloaded(heldout_ids[:, :64]), model(heldout_ids[:, :64]))
    assert load_model(folder, quantize=scheme).quantization == parse_scheme(scheme)  # the same scheme is fine
    other = "int4" if scheme.startswith("int8") else "int8"
    with pytest.raises(ValueError, match=f"already quantized as {parse_scheme(scheme).name}; load it with "
                                         f"quantize=None"):
        load_model(folder, quantize=other)


@pytest.mark.parametrize("foreign", [{"quant_method": "bitsandbytes", "load_in_8bit": True}, "gptq"])
def test_a_foreign_quantization_config_is_refused(foreign, tmp_path):
    folder = load_model("tiny-gpt2").save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = foreign
    (folder / "config.json").write_text(json.dumps(config))
    name = foreign["quant_method"] if isinstance(foreign, dict) else foreign
    with pytest.raises(CheckpointError, match=f"quantized with '{name}', a format this course cannot read"):
        load_model(folder)


def test_misaligned_tensors_in_a_quantized_file_still_run(tmp_path, heldout_ids):
    """Per-tensor int8 saves one 2-byte () scale per layer, and the safetensors header has any length: tensors
    land at offsets that are not multiples of 64, which the kernels' vector loads must never see."""
    model = load_model("tiny-gpt2", quantize="int8-tensor")
    folder = model.save_pretrained(tmp_path / "q")
    raw = (folder / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    quantized = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] in ("I8", "BF16")]
    misaligned = [k for k in quantized if (8 + length + header[k]["data_offsets"][0]) % 64]
    assert any(k.endswith(".weight") for k in misaligned), "the file happens to be aligned: the test proves nothing"
    reloaded = load_model(folder)
    for name, buffer in reloaded.named_buffers():
        assert buffer.data_ptr() % 64 == 0, name
    with torch.no_grad():
        assert torch.equal(reloaded(heldout_ids), model(heldout_ids))


@pytest.mark.parametrize("scheme, min_agreement, max_ppl_change", [
    ("int8", 0.97, 0.01),  # measured: top-1 0.988, perplexity +0.13 % (the spec's bar: < 1 %)
    ("int8-tensor", 0.95, 0.01),  # measured: 0.982, +0.24 %
    ("int4-sym", 0.85, 0.05),  # measured: 0.916, +1.96 %
    ("int4", 0.85, 0.05),  # zero point; measured: 0.934, +1.85 %
    ("int4-g128-sym", 0.85, 0.05),  # measured: 0.918, +2.36 %
])
def test_quality_against_float32_on_heldout_text(scheme, min_agreement, max_ppl_change, heldout_ids, float_logits):
    with torch.no_grad():
        logits = load_model("tiny-gpt2", quantize=scheme)(heldout_ids)
    agreement = (logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()

    def perplexity(x):
        return math.exp(F.cross_entropy(x[:, :-1].reshape(-1, x.size(-1)), heldout_ids[:, 1:].reshape(-1)).item())

    change = perplexity(logits) / perplexity(float_logits) - 1
    print(f"\n  {scheme}: top-1 agreement {agreement:.3f}, perplexity {change:+.2%}")
    assert agreement >= min_agreement
    assert abs(change) <= max_ppl_change


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_generation_with_and_without_cache(scheme):
    from course_lib import generate

    model = load_model("tiny-gpt2", quantize=scheme)
    tok = load_tokenizer("tiny-gpt2")
    prompt = torch.tensor([tok.encode("The dictionary type").ids])
    cached = model.generate(prompt, 12, eos_token_id=[])
    recomputed = model.generate(prompt, 12, eos_token_id=[], use_cache=False)
    assert cached.shape == (1, prompt.shape[1] + 12)
    assert torch.equal(cached, recomputed)
    text = generate(model, tok, "The dictionary type", max_new_tokens=5, seed=0)
    assert text.startswith("The dictionary type") and len(text) > len("The dictionary type")


# ------------------------------------------------------------------------------------------------ quantize on load

@pytest.fixture(scope="module")
def random_gpt2_folders(tmp_path_factory):
    """One small random GPT-2 saved three ways: safetensors (the Hub's transposed Conv1D layout, float32),
    the same in bfloat16, and a torch.save'd pytorch_model.bin of the same state dict."""
    torch.manual_seed(0)
    model = randomize_(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64)),
                       seed=3, scale=0.1)
    root = tmp_path_factory.mktemp("random-gpt2")
    model.save_pretrained(root / "safetensors")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(root / "bf16")
    (root / "bin").mkdir()
    shutil.copy(root / "safetensors" / "config.json", root / "bin" / "config.json")
    state = checkpoint_state_dict(model)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # (in, out): the file is transposed
    torch.save(state, root / "bin" / "pytorch_model.bin")
    return root


@pytest.mark.parametrize("layout", ["safetensors", "bf16", "bin"])
@pytest.mark.parametrize("scheme", ["int8", "int8-tensor", "int4", "int4-g64-sym"])
def test_quantize_on_load_from_the_transposed_gpt2_layout(random_gpt2_folders, layout, scheme):
    folder = random_gpt2_folders / layout
    float_model = load_model(folder)
    expected = quantize_model(load_model(folder), scheme)
    got = load_model(folder, quantize=scheme)
    a, b = expected.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(ids), expected(ids))
    c_attn = got.transformer.h[1].attn.c_attn  # transposed the right way round: close to the float (out, in)
    w = float_model.transformer.h[1].attn.c_attn.weight.detach()
    assert c_attn.dequantize().shape == (192, 64)
    # measured: int8 0.0059, int8-tensor 0.0092, int4 (zero point) 0.080, int4-g64-sym 0.106
    limit = {"int8": 0.01, "int8-tensor": 0.02, "int4": 0.15, "int4-g64-sym": 0.15}[scheme]
    assert relative_error(w, c_attn.dequantize()) < limit


# ------------------------------------------------------------------------------------------------ encoders

@pytest.fixture(scope="module")
def minilm_inputs():
    tok = load_tokenizer("all-MiniLM-L6-v2")
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    batch = tok.encode_batch(["The cat sits on the mat.", "Quantization stores each weight in fewer bits."])
    return torch.tensor([e.ids for e in batch]), torch.tensor([e.attention_mask for e in batch])


@pytest.mark.parametrize("scheme, min_cosine", [("int8", 0.99), ("int4-sym", 0.9), ("int4", 0.9)])
# measured: int8 0.9995, int4-sym 0.956, int4 (zero point) 0.975
def test_minilm_sentence_embeddings_survive_quantization(scheme, min_cosine, minilm_inputs):
    ids, mask = minilm_inputs
    assert bool((mask == 0).any())  # the shorter sentence is padded
    model = load_model("all-MiniLM-L6-v2", quantize=scheme)
    assert isinstance(model.encoder.layer[0].attention.self.query, QuantLinear)
    assert isinstance(model.embeddings.word_embeddings, QuantEmbedding)
    with torch.no_grad():
        ours = mean_pooling(model(ids, mask), mask)
        reference = mean_pooling(load_model("all-MiniLM-L6-v2")(ids, mask), mask)
    cosine = F.cosine_similarity(ours, reference)
    print(f"\n  MiniLM {scheme}: cosine {cosine.tolist()}")
    assert bool((cosine >= min_cosine).all())


def small_masked_lm(cls, model_type):
    config = EncoderConfig(model_type=model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    if model_type == "roberta":
        config.pad_token_id = 1
    torch.manual_seed(0)
    return randomize_(cls(config), scale=0.2)


@pytest.mark.parametrize("cls, model_type, head, table", [
    (BertForMaskedLM, "bert", "cls.predictions.decoder", "bert.embeddings.word_embeddings"),
    (RobertaForMaskedLM, "roberta", "lm_head.decoder", "roberta.embeddings.word_embeddings"),
])
@pytest.mark.parametrize("scheme", ["int8", "int4-sym", "int4"])
def test_masked_lm_heads_read_the_quantized_word_embeddings(cls, model_type, head, table, scheme, tmp_path):
    model = small_masked_lm(cls, model_type)
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    quantized = quantize_model(copy.deepcopy(model), scheme)
    simulated = copy.deepcopy(model)  # the float model computing with the quantized model's dequantized weights
    with torch.no_grad():
        reference = model(ids)
        for name, module in simulated.named_modules():
            if isinstance(module, (layers.Linear, layers.Embedding)) and name != head:  # the head is tied
                module.weight.copy_(quantized.get_submodule(name).dequantize())
        simulated_logits = simulated(ids)
    assert isinstance(quantized.get_submodule(head), TiedQuantHead)
    assert quantized.get_submodule(head).table is quantized.get_submodule(table)
    state = quantized.state_dict()
    assert f"{head}.weight" not in state and f"{table}.weight_scale" in state
    with torch.no_grad():
        with reference_path():
            torch.testing.assert_close(quantized(ids), simulated_logits, rtol=0, atol=1e-5)
        logits = quantized(ids)
    # measured with these random weights: int8 0.017 / 0.018, int4-sym 0.35 / 0.31, int4 (zero point) 0.16 / 0.17
    # (BERT / RoBERTa; errors grow through two random layers), against the simulation 0.006 (the kernels'
    # bfloat16 roundings only)
    assert relative_error(reference, logits) < (0.05 if scheme == "int8" else 0.6)
    assert relative_error(simulated_logits, logits) < 0.02
    reloaded = load_model(quantized.save_pretrained(tmp_path / "m"), task="masked-lm", fast=False)
    with torch.no_grad():
        assert torch.equal(reloaded(ids), logits)


# ------------------------------------------------------------------------------------------------ fallbacks

@pytest.mark.parametrize("scheme", ["int4-sym", "int4"])
def test_without_the_int4_kernel_layers_stay_plain(monkeypatch, heldout_ids, scheme):
    layer_k, _ = quant_linear(scheme, 50)
    kernel_model = load_model("tiny-gpt2", quantize=scheme)
    monkeypatch.setattr(Q, "int4_kernel_available", lambda: False)
    layer, _ = quant_linear(scheme, 50)
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert layer.layout == "plain" and not layer.uses_kernel(x)
        assert layer.weight.shape == (50, 128)
        y = layer(x)
        with reference_path():
            assert torch.equal(layer(x), y)
            kernel_y = layer_k(x)
        torch.testing.assert_close(y, x @ layer.dequantize().T + layer.bias, rtol=0, atol=0)
        assert torch.equal(layer.state_dict()["weight"], layer_k.state_dict()["weight"])  # the same integers
    model = load_model("tiny-gpt2", quantize=scheme)
    assert model.transformer.wte.layout == "plain" and isinstance(model.lm_head, TiedQuantHead)
    with torch.no_grad():
        logits = model(heldout_ids[:, :64])
        with reference_path():
            kernel_logits = kernel_model(heldout_ids[:, :64])
    if parse_scheme(scheme).zero_point:  # the kernel layout rounds (8 - zero) * scale to bfloat16 (<= scale / 32)
        # measured: 0.0019 on this layer (gaussian weights with outliers), 0.00023 on the logits
        assert relative_error(kernel_y, y) < 5e-3 and relative_error(kernel_logits, logits) < 1e-2
    else:  # symmetric: the kernel layout's reference computes with the very same numbers
        assert torch.equal(kernel_y, y) and torch.equal(kernel_logits, logits)


def test_reference_path_switches_int8_too():
    layer, _ = quant_linear("int8", 48, k=64)
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert layer.uses_kernel(x) == Q.int8_kernel_available()
        with reference_path():
            assert not layer.uses_kernel(x) and not Q._KERNELS_ENABLED
            with reference_path():
                pass
            assert not layer.uses_kernel(x)  # still inside the outer block
            assert torch.equal(layer(x), x @ layer.dequantize().T + layer.bias)
        assert Q._KERNELS_ENABLED and layer.uses_kernel(x) == Q.int8_kernel_available()
        with pytest.raises(KeyError), reference_path():
            raise KeyError("boom")
        assert Q._KERNELS_ENABLED  # restored after an exception too


# ------------------------------------------------------------------------------------------------ CheckpointReader

@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"f32": torch.randn(10, 6, generator=g), "bf16_1d": torch.randn(7, generator=g).bfloat16(),
            "i8": torch.randint(-128, 127, (9, 5), dtype=torch.int8, generator=g),
            "bf16": torch.randn(5, 3, generator=g).bfloat16(),
            "u8_3d": torch.randint(0, 255, (4, 3, 2), dtype=torch.uint8, generator=g),
            "f32_1d": torch.randn(11, generator=g)}


@pytest.mark.parametrize("file", ["model.safetensors", "pytorch_model.bin"])
def test_read_rows_equals_slicing(tensors, tmp_path, file):
    from safetensors.torch import save_file

    path = tmp_path / file
    save_file(tensors, path) if file.endswith(".safetensors") else torch.save(tensors, path)
    reader = CheckpointReader([path])
    for key, tensor in tensors.items():
        assert reader.dtype(key) == tensor.dtype and reader.shape(key) == tuple(tensor.shape)
        n = tensor.shape[0]
        for start, stop in [(0, n), (1, 3), (n - 1, n), (2, 2)]:
            rows = reader.read_rows(key, start, stop)
            assert rows.dtype == tensor.dtype and torch.equal(rows, tensor[start:stop]), (key, start, stop)
            assert torch.equal(rows, reader.get(key)[start:stop])


def test_read_rows_past_the_end(tensors, tmp_path):
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors")
    reader = CheckpointReader([tmp_path / "model.safetensors"])
    try:
        rows = reader.read_rows("f32", 8, 12)
    except (CheckpointError, IndexError, ValueError):
        return
    assert torch.equal(rows, tensors["f32"][8:12])


def test_read_rows_of_a_truncated_file(tensors, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    last = max(tensors, key=lambda k: header[k]["data_offsets"][1])  # the tensor stored last loses its end
    reader = CheckpointReader([path])
    path.write_bytes(data[:-3])  # cut after the reader read the header
    with pytest.raises(CorruptCheckpointError, match=f"tensor '{last}' ends early"):
        reader.read_rows(last, 0, tensors[last].shape[0])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        CheckpointReader([path])  # opening it again: the header no longer matches the file


# --------------------------------------------------------------------------------------
# Convolutions (chapter 10): int8 per output channel, the im2col path

def _small_resnet(seed: int = 0):
    from course_lib.models.resnet import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig.from_dict({"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
                                     "layer_type": "basic", "num_labels": 3})
    model = ResNetForImageClassification(config)
    with torch.no_grad():  # BN statistics that are not the identity, so folding/scales matter
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


def test_quant_conv_is_conv2d_with_per_channel_int8_filters():
    from course_lib.vision import Conv2d, conv2d

    torch.manual_seed(0)
    conv = Conv2d(6, 10, 3, stride=2, padding=1, dilation=1, groups=2)
    x = torch.randn(2, 6, 9, 9)
    q = Q.QuantConv2d.from_conv(conv, "int8")
    assert q.weight.dtype == torch.int8 and tuple(q.weight.shape) == (10, 3, 3, 3)
    assert tuple(q.weight_scale.shape) == (10,) and q.weight_scale.dtype == torch.bfloat16
    flat_q, flat_scale = quantize_int8(conv.weight.detach().reshape(10, -1))  # one scale per filter (output channel)
    assert torch.equal(q.weight.reshape(10, -1), flat_q) and torch.equal(q.weight_scale, flat_scale)
    expected = conv2d(x, dequantize_int8(flat_q, flat_scale).view(10, 3, 3, 3), conv.bias.detach(), 2, 1, 1, 2)
    assert torch.equal(q(x), expected)
    assert (q(x) - conv(x)).abs().max() < 0.02 * conv(x).abs().max()  # int8: close, not equal
    tensor = Q.QuantConv2d.from_conv(conv, "int8-tensor")
    assert tensor.weight_scale.dim() == 0
    with pytest.raises(ValueError, match="int8 filters only"):
        Q.QuantConv2d.from_conv(conv, "int4")


def test_quantize_model_int8_quantizes_a_resnets_convolutions(tmp_path):
    model = _small_resnet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    before = model_nbytes(model)
    quantize_model(model, "int8")
    convs = [n for n, m in model.named_modules() if isinstance(m, Q.QuantConv2d)]
    assert len(convs) == 6 and "resnet.embedder.embedder.convolution" in convs  # stem, 4 block convs, 1 shortcut
    assert isinstance(model.classifier[1], QuantLinear)
    assert model_nbytes(model) < 0.4 * before  # the filters are most of a ResNet
    with torch.no_grad():
        assert (model(x) - reference).abs().max() < 0.05 * reference.abs().max()
    state = model.state_dict()
    assert state["resnet.embedder.embedder.convolution.weight"].shape == (8, 3, 7, 7)  # the float file's shape
    assert state["resnet.embedder.embedder.convolution.weight"].dtype == torch.int8
    # saved quantized, loaded back quantized: the same model
    folder = model.save_pretrained(tmp_path / "int8")
    again = load_model(folder)
    assert isinstance(again.resnet.embedder.embedder.convolution, Q.QuantConv2d)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_load_model_int8_quantizes_convolutions_while_reading(tmp_path):
    model = _small_resnet(1)
    folder = model.save_pretrained(tmp_path / "float")
    x = torch.randn(1, 3, 24, 24)
    by_hand = quantize_model(copy.deepcopy(model), "int8")
    loaded = load_model(folder, quantize="int8")
    for name, module in by_hand.named_modules():
        if isinstance(module, Q.QuantConv2d):
            mine = loaded.get_submodule(name)
            assert isinstance(mine, Q.QuantConv2d)
            assert torch.equal(mine.weight, module.weight) and torch.equal(mine.weight_scale, module.weight_scale)
    with torch.no_grad():
        assert torch.equal(loaded(x), by_hand(x))


def test_int4_leaves_convolutions_in_float_and_refuses_to_convert_int8_ones():
    model = _small_resnet()
    quantize_model(model, "int4-g8-sym")
    assert not any(isinstance(m, Q.QuantConv2d) for m in model.modules())
    assert isinstance(model.resnet.embedder.embedder.convolution.weight, torch.nn.Parameter)
    int8 = quantize_model(_small_resnet(), "int8")
    with pytest.raises(ValueError, match="int8 convolution .* quantize the float model"):
        quantize_model(int8, "int4")
    assert isinstance(int8.resnet.embedder.embedder.convolution, Q.QuantConv2d)  # left as it was
