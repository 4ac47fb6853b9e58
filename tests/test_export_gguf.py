"""course_lib.export.gguf_blocks / gguf_export (chapter 11): GGUF's Q8_0 / Q4_0 blocks written by the
course, the GPT-2 writer ``to_gguf`` and the reader ``read_gguf`` / ``load_gguf_model``.

The reference is the ``gguf`` package itself (llama.cpp's own Python library): its
``quants.quantize`` / ``dequantize`` for the bytes, its tensor-name map and key names for
the layout, its ``GGUFReader`` for what the file holds.

Quality thresholds for the quantized round trips were measured first on the tiny GPT-2 over
16 windows of 128 held-out tokens (ratios are max|Δlogit| / max|logit| and rms(Δlogit) / std(logit)):
F16 2.7e-4 / 1.6e-4, top-1 agreement 1.000; Q8_0 5.5e-3 / 3.5e-3, top-1 0.994, perplexity -0.03 %;
Q4_0 (token embedding Q8_0) 3.5e-2 / 2.9e-2, top-1 0.958, perplexity -0.03 %. Why that size:
a Q8_0 weight is off by at most d/2 = absmax/254 of its block (0.4 %), a Q4_0 weight by
absmax/16 (6 %), and the logit error follows the weight error. The tests allow about twice
the measured error, well under the per-weight worst case.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402
from gguf import quants  # noqa: E402

from course_lib import load_model, load_tokenizer  # noqa: E402
from course_lib.assets import asset_path  # noqa: E402
from course_lib.corpus import corpus_text  # noqa: E402
from course_lib.export import gguf_blocks as gb  # noqa: E402
from course_lib.export import gguf_export as ge  # noqa: E402
from course_lib.export.gguf_export import (GGUFFormatError, gguf_tokenizer, load_gguf_model, read_gguf,  # noqa: E402
                                           to_gguf)
from course_lib.generation import generate_ids  # noqa: E402
from course_lib.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402

BLOCK_TYPES = {"Q8_0": GT.Q8_0, "Q4_0": GT.Q4_0}


def reference_bytes(array: np.ndarray, qtype: str) -> np.ndarray:
    return quants.quantize(np.ascontiguousarray(array, dtype=np.float32), BLOCK_TYPES[qtype])


def assert_blocks_match(array: np.ndarray, qtype: str) -> None:
    ours, ref = gb.quantize_blocks(array, qtype), reference_bytes(array, qtype)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    bad = np.argwhere(ours != ref)
    assert bad.size == 0, f"{qtype}: {len(bad)} bytes differ from gguf's, first at {bad[0].tolist()}"
    np.testing.assert_array_equal(gb.dequantize_blocks(ours, qtype).numpy(), quants.dequantize(ref, BLOCK_TYPES[qtype]))


# --------------------------------------------------------------------------------------
# Blocks: byte for byte against gguf.quants

@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("shape", [(32,), (3, 64), (2, 3, 96), (17, 256)])
@pytest.mark.parametrize("scale", [1.0, 1e-3, 3e2, 1e-6])
def test_random_blocks_equal_gguf_bytes(qtype, shape, scale):
    rng = np.random.default_rng(hash((qtype, shape, scale)) % 2**32)
    assert_blocks_match((rng.standard_normal(shape) * scale).astype(np.float32), qtype)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_special_blocks_equal_gguf_bytes(qtype):
    rng = np.random.default_rng(1)
    rows = [np.zeros(32), -np.zeros(32), np.r_[-0.0, np.zeros(31)],  # all-zero blocks, signed zeros
            np.r_[np.zeros(31), 5.0], np.r_[-5.0, np.zeros(31)],  # one non-zero weight
            np.r_[3.0, -3.0, rng.uniform(-1, 1, 30)], np.r_[-3.0, 3.0, rng.uniform(-1, 1, 30)],  # +a/-a ties
            np.r_[127.0, np.arange(-15.5, 15.5)],  # Q8_0: d = 1, halves away from zero
            np.r_[-8.0, np.arange(-7.5, 7.5, 0.5), 0.5],  # Q4_0: d = 1, halves of w / d
            np.full(32, 7.0), np.full(32, -7.0),  # constant blocks
            rng.uniform(-1, 1, 32) * 1e5,  # large (scale well inside float16)
            rng.uniform(-1, 1, 32) * 1e-30,  # tiny: the float16 scale underflows to 0
            np.r_[1e-3 * rng.standard_normal(31), 40.0],  # an outlier
            rng.standard_normal(32).astype(np.float16).astype(np.float64)]  # values exactly representable
    assert all(len(r) == 32 for r in rows)
    array = np.stack([np.asarray(r, dtype=np.float64) for r in rows]).astype(np.float32)
    assert_blocks_match(array, qtype)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_weights_on_rounding_boundaries_equal_gguf_bytes(qtype):
    """Weights at (k + 1/2) steps, computed in float32: w / d lands on a half or one ulp beside it,
    where a different rounding rule or a rounded scale would change the integer."""
    rng = np.random.default_rng(7)
    absmax = rng.uniform(0.01, 100, (2000, 1)).astype(np.float32)
    if qtype == "Q8_0":
        w = (rng.integers(-127, 127, (2000, 32)) + 0.5).astype(np.float32) * (absmax / np.float32(127))
        w[:, 0] = absmax[:, 0] * rng.choice([-1, 1], 2000)
    else:
        w = (rng.integers(-8, 8, (2000, 32)) + 0.5).astype(np.float32) * (absmax / np.float32(-8))
        w[:, 5] = absmax[:, 0]
    assert_blocks_match(w.astype(np.float32), qtype)


def test_rounding_is_half_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 3.0, -0.0])
    assert gb.round_half_away_from_zero(x).tolist() == [1, 2, 3, -1, -3, 0, 0, 3, 0]
    assert torch.round(torch.tensor([0.5, 2.5])).tolist() == [0, 2]  # why torch.round will not do


def test_q8_0_layout_by_hand():
    w = torch.zeros(32)
    w[0], w[1], w[5] = 2.54, -1.27, 0.005  # absmax 2.54: d = 0.02
    block = gb.quantize_q8_0(w)
    assert block.shape == (34,) and gb.BLOCK_BYTES["Q8_0"] == 34
    d = np.frombuffer(block[:2].tobytes(), "<f2")[0]
    assert d == np.float16(2.54 / 127)  # the scale first, float16 little-endian
    q = block[2:].view(np.int8)
    assert q[0] == 127 and q[1] == -64 and q[5] == 0 and not q[[2, 3, 4, *range(6, 32)]].any()  # -63.5 -> -64


def test_q4_0_nibble_order_by_hand():
    w = torch.arange(32, dtype=torch.float32) - 16  # -16 .. 15: the extreme is -16 -> d = 2
    block = gb.quantize_q4_0(w)
    assert block.shape == (18,) and gb.BLOCK_BYTES["Q4_0"] == 18
    assert np.frombuffer(block[:2].tobytes(), "<f2")[0] == 2.0
    codes = (np.clip(np.trunc(w.numpy() / 2 + 8.5), 0, 15)).astype(np.uint8)  # weight j -> code j
    packed = block[2:]
    np.testing.assert_array_equal(packed & 0x0F, codes[:16])  # low nibbles: weights 0..15
    np.testing.assert_array_equal(packed >> 4, codes[16:])  # high nibbles: weights 16..31
    d, q = gb.unpack_q4_0(block)
    assert q[0].tolist() == (codes.astype(int) - 8).tolist() and d.item() == 2.0


def test_pack_unpack_are_inverses():
    w = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    d, q = gb.q8_0_scales_and_ints(w)
    d2, q2 = gb.unpack_q8_0(gb.pack_q8_0(d, q))
    assert torch.equal(d, d2) and torch.equal(q, q2)
    d, codes = gb.q4_0_scales_and_ints(w)
    d2, q2 = gb.unpack_q4_0(gb.pack_q4_0(d, codes))
    assert torch.equal(d, d2) and torch.equal(q2, codes.to(torch.int8) - 8)


def test_quantization_error_is_within_half_a_step():
    """|w - ŵ| <= step / 2, plus the float16 rounding of the scale (at most 2**-11 of it, times |q| <= 128);
    Q4_0 only: a weight of the extreme's opposite sign beyond 7.5 steps is clipped to code 7 (one step)."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    blocks = w.reshape(-1, 32)
    for qtype, step in (("Q8_0", blocks.abs().amax(-1, keepdim=True) / 127),
                        ("Q4_0", blocks.abs().amax(-1, keepdim=True) / 8)):
        back = gb.dequantize_blocks(gb.quantize_blocks(w, qtype), qtype).reshape(-1, 32)
        steps = torch.where(blocks.abs() > 7.5 * step, 1.0, 0.5) if qtype == "Q4_0" else 0.5
        assert bool(((back - blocks).abs() <= step * (steps + 2 ** -11 * 128) + 1e-7).all()), qtype
        assert (back - blocks).abs().max() > 0.3 * step.min()  # and it does round


def test_bits_per_weight_and_accepts_torch_numpy_and_half():
    assert gb.bits_per_weight("Q8_0") == 8.5 and gb.bits_per_weight("Q4_0") == 4.5
    assert gb.bits_per_weight("F16") == 16 and gb.bits_per_weight("F32") == 32
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    for qtype in ("Q8_0", "Q4_0"):
        np.testing.assert_array_equal(gb.quantize_blocks(w, qtype), gb.quantize_blocks(w.numpy(), qtype))
        np.testing.assert_array_equal(gb.quantize_blocks(w.half(), qtype), reference_bytes(w.half().float().numpy(),
                                                                                           qtype))
    np.testing.assert_array_equal(gb.quantize_blocks(w, "F16"), quants.quantize(w.numpy(), GT.F16))
    np.testing.assert_array_equal(gb.quantize_blocks(w, "F32"), w.numpy())


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_block_errors(qtype):
    with pytest.raises(ValueError, match="multiple of 32"):
        gb.quantize_blocks(torch.ones(3, 40), qtype)
    with pytest.raises(ValueError, match="NaN or infinite"):
        gb.quantize_blocks(torch.tensor([float("nan")] + [0.0] * 31), qtype)
    with pytest.raises(TypeError, match="floating-point"):
        gb.quantize_blocks(torch.ones(32, dtype=torch.int32), qtype)
    with pytest.raises(ValueError, match="more than float16 holds"):
        gb.quantize_blocks(torch.full((32,), 1e7), qtype)
    with pytest.raises(ValueError, match="whole 34-byte blocks|whole 18-byte blocks"):
        gb.dequantize_blocks(np.zeros(35, np.uint8), qtype)
    with pytest.raises(ValueError, match="not one the course writes"):
        gb.quantize_blocks(torch.ones(32), "Q5_K")
    with pytest.raises(ValueError, match="do not fit float16"):
        gb.quantize_blocks(torch.full((4,), 1e6), "F16")


# --------------------------------------------------------------------------------------
# The tiny GPT-2 through a GGUF file and back

@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="module")
def windows(tok):
    ids = torch.tensor(tok.encode(corpus_text("heldout")[:30000]).ids)
    return torch.stack([ids[i * 128:(i + 1) * 128] for i in range(8)])  # (8, 128) held-out tokens


@pytest.fixture(scope="module")
def reference_logits(tiny, windows):
    with torch.no_grad():
        return tiny(windows)


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {q: to_gguf(tiny, folder / f"tiny-{q}.gguf", q, tokenizer=asset_path("tiny-gpt2"))
            for q in ("F32", "F16", "Q8_0", "Q4_0")}


def logits_of(path, windows):
    with torch.no_grad():
        return load_gguf_model(path)(windows)


def perplexity(logits, windows):
    return math.exp(F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item())


def test_f32_round_trip_is_exact(files, windows, reference_logits, tiny):
    out = logits_of(files["F32"], windows)
    assert (out - reference_logits).abs().max().item() <= 1e-5
    contents = read_gguf(files["F32"])
    for key, value in tiny.state_dict().items():  # every weight back, in the Hub's layout
        if key.startswith("lm_head."):
            continue
        hub = key.removeprefix("transformer.")
        expected = value.T if hub.endswith(ge.CONV1D_ENDINGS) else value
        assert torch.equal(contents.state_dict[hub], expected), hub


def test_f32_greedy_tokens_equal_the_original(files, tiny, tok):
    prompt = torch.tensor([tok.encode("The Python interpreter").ids])
    model = load_gguf_model(files["F32"])
    assert torch.equal(generate_ids(model, prompt, 12), generate_ids(tiny, prompt, 12))


def test_f16_logits_within_1e_2_relative(files, windows, reference_logits):
    out = logits_of(files["F16"], windows)
    assert (out - reference_logits).abs().max().item() <= 1e-2 * reference_logits.abs().max().item()


@pytest.mark.parametrize("qtype, max_rel, rms_rel, top1, ppl_change", [
    ("Q8_0", 0.012, 0.008, 0.98, 0.005),  # measured 5.5e-3, 3.5e-3, 0.994, 0.03 %
    ("Q4_0", 0.07, 0.06, 0.90, 0.02),  # measured 3.5e-2, 2.9e-2, 0.958, 0.03 %
])
def test_quantized_logits_within_the_formats_error(files, windows, reference_logits, qtype, max_rel, rms_rel, top1,
                                                   ppl_change):
    out = logits_of(files[qtype], windows)
    diff = out - reference_logits
    assert diff.abs().max().item() <= max_rel * reference_logits.abs().max().item()
    assert diff.pow(2).mean().sqrt().item() <= rms_rel * reference_logits.std().item()
    assert (out.argmax(-1) == reference_logits.argmax(-1)).float().mean().item() >= top1
    assert abs(perplexity(out, windows) / perplexity(reference_logits, windows) - 1) <= ppl_change
    assert diff.abs().max().item() > 0  # it really is quantized


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_file_bytes_are_gguf_reference_quantization(files, tiny, qtype):
    """Every tensor in the file is what gguf.quants.quantize makes of the model's weight."""
    reader = gguf.GGUFReader(files[qtype])
    weights = {ge.hub_to_gguf_name(k): v.float().contiguous().numpy() for k, v in tiny.state_dict().items()
               if not k.startswith("lm_head.")}
    for t in reader.tensors:
        expected = quants.quantize(weights[t.name], t.tensor_type)
        assert np.array_equal(np.asarray(t.data).view(np.uint8), expected.view(np.uint8)), t.name


def test_names_and_shapes_follow_gguf_conventions(files, tiny):
    config = tiny.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    allowed = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2]
               for i in range(config.n_layer)}
    C, V, F_, P = config.n_embd, config.vocab_size, config.inner_dim, config.n_positions
    expected_ne = {"token_embd.weight": [C, V], "position_embd.weight": [C, P], "blk.0.attn_qkv.weight": [C, 3 * C],
                   "blk.0.attn_qkv.bias": [3 * C], "blk.0.attn_output.weight": [C, C], "blk.0.ffn_up.weight": [C, F_],
                   "blk.0.ffn_down.weight": [F_, C], "blk.0.attn_norm.weight": [C], "output_norm.bias": [C]}
    reader = gguf.GGUFReader(files["F32"])
    names = {t.name: t for t in reader.tensors}
    for key in tiny.state_dict():
        if key.startswith("lm_head."):
            continue
        hub = key.removeprefix("transformer.")
        theirs = name_map.get_name(hub, try_suffixes=(".weight", ".bias"))
        assert ge.hub_to_gguf_name(hub) == theirs, hub
        assert theirs.rsplit(".", 1)[0] in allowed and theirs in names
    assert len(names) == 2 + 2 + 12 * config.n_layer  # embeddings, output norm, 12 per block; no output.weight
    for name, ne in expected_ne.items():  # GGUF lists dimensions innermost first (ggml's ne)
        assert names[name].shape.tolist() == ne, name
    assert all(t.data_offset % reader.alignment == 0 for t in reader.tensors)


@pytest.mark.parametrize("qtype, ftype", [("F32", "ALL_F32"), ("F16", "MOSTLY_F16"), ("Q8_0", "MOSTLY_Q8_0"),
                                          ("Q4_0", "MOSTLY_Q4_0")])
def test_tensor_types_and_file_type(files, qtype, ftype):
    contents = read_gguf(files[qtype])
    assert contents.metadata["general.file_type"] == gguf.LlamaFileType[ftype] and contents.file_type == qtype
    for name, ttype in contents.tensor_types.items():
        if name.endswith(".bias") or "norm" in name or name == "position_embd.weight":
            assert ttype == "F32", name
        elif name == "token_embd.weight":
            assert ttype == ("Q8_0" if qtype == "Q4_0" else qtype)
        else:
            assert ttype == qtype, name


def test_metadata_as_llama_cpp_reads_it(files, tiny, tok):
    config = tiny.config
    meta = read_gguf(files["Q8_0"]).metadata
    K, arch = gguf.Keys, "gpt2"
    assert meta[K.General.ARCHITECTURE] == arch
    assert meta[K.General.QUANTIZATION_VERSION] == gguf.GGML_QUANT_VERSION
    assert meta[K.LLM.CONTEXT_LENGTH.format(arch=arch)] == config.n_positions
    assert meta[K.LLM.EMBEDDING_LENGTH.format(arch=arch)] == config.n_embd
    assert meta[K.LLM.BLOCK_COUNT.format(arch=arch)] == config.n_layer
    assert meta[K.LLM.FEED_FORWARD_LENGTH.format(arch=arch)] == config.inner_dim
    assert meta[K.Attention.HEAD_COUNT.format(arch=arch)] == config.n_head
    assert meta[K.Attention.LAYERNORM_EPS.format(arch=arch)] == pytest.approx(config.layer_norm_epsilon, rel=1e-6)
    # "gpt-2": the name llama.cpp's vocabulary loader knows for GPT-2's regex (llama-vocab.cpp; convert_hf_to_gguf.py
    # writes it for gpt2); an unknown name such as "gpt2" makes llama.cpp refuse the file
    assert meta[K.Tokenizer.MODEL] == "gpt2" and meta[K.Tokenizer.PRE] == "gpt-2"
    spec = json.loads((asset_path("tiny-gpt2") / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = meta[K.Tokenizer.LIST]
    assert len(tokens) == config.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    assert meta[K.Tokenizer.MERGES] == [" ".join(m) for m in spec["model"]["merges"]]
    types = meta[K.Tokenizer.TOKEN_TYPE]
    eos = tok.token_to_id("<|endoftext|>")
    assert types[eos] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == len(tokens) - 1
    assert meta[K.Tokenizer.BOS_ID] == config.bos_token_id and meta[K.Tokenizer.EOS_ID] == config.eos_token_id
    assert meta[K.Tokenizer.ADD_BOS] is False


def test_config_read_back_builds_the_same_model(files, tiny):
    config = GPT2Config.from_dict(read_gguf(files["Q4_0"]).config)
    for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "inner_dim", "layer_norm_epsilon",
                  "activation_function", "bos_token_id", "eos_token_id"):
        assert getattr(config, field) == getattr(tiny.config, field), field


def test_tokenizer_in_the_file_reproduces_the_tiny_gpt2s(files, tok):
    from_file = gguf_tokenizer(files["Q4_0"])
    for text in ["Hello world", "def f(x):\n    return x ** 2  # square", "  leading spaces and\ttabs",
                 "héllo ünïcode — ☃ 🙂", "<|endoftext|>The end.<|endoftext|>", ""]:
        assert from_file.encode(text).ids == tok.encode(text).ids, text
        assert from_file.decode(tok.encode(text).ids) == tok.decode(tok.encode(text).ids)


def test_tokenizer_object_writes_the_same_vocabulary(files, tiny, tok, tmp_path):
    path = to_gguf(tiny, tmp_path / "t.gguf", "Q8_0", tokenizer=tok)  # a tokenizers.Tokenizer, not a folder
    assert read_gguf(path).tokenizer == read_gguf(files["Q8_0"]).tokenizer


def test_padded_vocabulary_marks_unused_ids(tiny, tmp_path):
    """A model whose embedding is larger than its tokenizer: the extra ids are [PAD<id>], UNUSED."""
    config = GPT2Config(vocab_size=4096 + 64, n_positions=64, n_embd=64, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    path = to_gguf(model, tmp_path / "padded.gguf", "Q8_0", tokenizer=asset_path("tiny-gpt2"))
    pieces = read_gguf(path).tokenizer
    assert pieces["tokens"][4096:4098] == ["[PAD4096]", "[PAD4097]"]
    assert set(pieces["token_types"][4096:]) == {gguf.TokenType.UNUSED}


def test_row_lengths_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    config = GPT2Config(vocab_size=100, n_positions=16, n_embd=40, n_layer=1, n_head=2)  # 40 % 32 != 0
    model = GPT2LMHeadModel(config).eval()
    path = to_gguf(model, tmp_path / "odd.gguf", "Q4_0", tokenizer=False)
    types = read_gguf(path).tensor_types
    assert types["blk.0.attn_qkv.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q4_0"  # 160 % 32 == 0
    loaded = load_gguf_model(path).transformer.h[0]
    original = model.transformer.h[0]
    assert torch.equal(loaded.attn.c_attn.weight, original.attn.c_attn.weight.half().float())  # F16, exactly
    q4 = gb.dequantize_blocks(gb.quantize_blocks(original.mlp.c_proj.weight, "Q4_0"), "Q4_0")
    assert torch.equal(loaded.mlp.c_proj.weight, q4)


def test_load_gguf_model_dtype_and_report(files):
    model = load_gguf_model(files["Q8_0"], dtype="bfloat16")
    assert model.transformer.wte.weight.dtype == torch.bfloat16 and not model.training
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again
    assert model.load_report.ok and model.gguf_types["blk.0.ffn_up.weight"] == "Q8_0"
    with pytest.raises(ValueError, match="quantize="):
        load_gguf_model(files["Q8_0"], quantize="float16")


def test_load_gguf_model_quantize_int8(files, windows, reference_logits):
    from course_lib.quantization import QuantLinear

    model = load_gguf_model(files["F32"], quantize="int8")  # chapter 07's layers on the file's weights
    assert isinstance(model.transformer.h[0].mlp.c_fc, QuantLinear)
    with torch.no_grad():
        out = model(windows[:2])
    assert (out.argmax(-1) == reference_logits[:2].argmax(-1)).float().mean().item() >= 0.95


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_layout_read_by_hand_agrees_with_gguf_reader(files, qtype):
    layout = ge.read_gguf_layout(files[qtype])
    reader = gguf.GGUFReader(files[qtype])
    assert layout["version"] == 3 and layout["alignment"] == reader.alignment == 32
    assert layout["data_offset"] == reader.data_offset
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert [m["key"] for m in layout["metadata"]] == list(fields)
    for m in layout["metadata"]:
        assert m["value"] == fields[m["key"]].contents() and m["offset"] == fields[m["key"]].offset, m["key"]
        assert m["type"] == fields[m["key"]].types[0].name
    assert len(layout["tensors"]) == len(reader.tensors)
    for ours, theirs in zip(layout["tensors"], reader.tensors):
        assert ours["name"] == theirs.name and ours["ne"] == theirs.shape.tolist()
        assert ours["type"] == theirs.tensor_type.name and ours["data_offset"] == theirs.data_offset
        assert ours["nbytes"] == theirs.n_bytes and ours["data_offset"] % 32 == 0
    # the sections' borders: metadata ends where the first tensor description (its name's length) starts,
    # the descriptions end at header_end, and the data starts at header_end rounded up to the alignment
    first_info = min(t.field.offset for t in reader.tensors)
    assert layout["tensor_infos_offset"] == first_info
    assert layout["tensor_infos_offset"] < layout["header_end"] <= layout["data_offset"] < layout["header_end"] + 32
    with open(files[qtype], "rb") as f:  # a tensor's bytes are where the layout says
        t = layout["tensors"][0]
        f.seek(t["data_offset"])
        assert f.read(t["nbytes"]) == np.asarray(reader.tensors[0].data).tobytes()


# --------------------------------------------------------------------------------------
# Errors, atomic writes, lazy imports

def test_writer_errors(tiny, tmp_path):
    from course_lib.models.encoder import BertModel, EncoderConfig

    bert = BertModel(EncoderConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    with pytest.raises(TypeError, match="GPT2LMHeadModel.*to_onnx"):
        to_gguf(bert, tmp_path / "b.gguf", tokenizer=False)
    with pytest.raises(ValueError, match="not one the course writes"):
        to_gguf(tiny, tmp_path / "x.gguf", "Q6_K", tokenizer=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        to_gguf(tiny, tmp_path / "missing" / "x.gguf", tokenizer=False)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        to_gguf(tiny, tmp_path, tokenizer=False)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        to_gguf(tiny, tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        to_gguf(tiny, tmp_path / "x.gguf", tokenizer=tmp_path)
    small = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="belongs to another model"):
        to_gguf(small, tmp_path / "x.gguf", tokenizer=asset_path("tiny-gpt2"))
    odd = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                     activation_function="relu"))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        to_gguf(odd, tmp_path / "x.gguf", tokenizer=False)
    assert list(tmp_path.iterdir()) == []  # nothing written by any failed call


def test_quantized_course_model_is_refused(tmp_path):
    from course_lib.quantization import quantize_model

    model = quantize_model(load_model("tiny-gpt2"), "int8")
    with pytest.raises(ValueError, match="quantized layers"):
        to_gguf(model, tmp_path / "q.gguf", "Q8_0", tokenizer=False)


def test_failed_write_leaves_the_old_file_and_no_debris(tiny, tmp_path, monkeypatch):
    path = to_gguf(tiny, tmp_path / "m.gguf", "Q8_0", tokenizer=False)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        to_gguf(tiny, path, "Q4_0", tokenizer=False)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    monkeypatch.undo()
    bad = load_model("tiny-gpt2")
    with torch.no_grad():
        bad.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc\.weight .*NaN"):
        to_gguf(bad, tmp_path / "nan.gguf", "Q8_0", tokenizer=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_reader_errors(files, tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        read_gguf(asset_path("tiny-gpt2") / "model.safetensors")
    with pytest.raises(GGUFFormatError, match="not a file"):
        read_gguf(tmp_path)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(files["Q8_0"].read_bytes()[:1000])
    with pytest.raises(GGUFFormatError, match="truncated or damaged"):
        read_gguf(truncated)
    with pytest.raises(GGUFFormatError, match="truncated"):
        ge.read_gguf_layout(truncated)
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        ge.read_gguf_layout(asset_path("tiny-gpt2") / "config.json")

    llama = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(llama, arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFFormatError, match="'llama' model; the course reads llama.cpp's 'gpt2'"):
        read_gguf(llama)


def _rewrite(src, dst, *, change_type: dict | None = None, extra: dict | None = None) -> None:
    """Copy a gpt2 GGUF file, replacing some tensors' bytes/types or adding tensors (for error tests)."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch="gpt2")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value, vtype = field.contents(), field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        if change_type and t.name in change_type:
            raw, qtype = change_type[t.name]
            writer.add_tensor(t.name, raw, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_reader_refuses_types_names_and_an_untied_head(files, tiny, tmp_path):
    C, V = tiny.config.n_embd, tiny.config.vocab_size
    q6k = tmp_path / "q6k.gguf"  # Q6_K: 256 weights in 210 bytes; the bytes do not matter, the type is refused
    _rewrite(files["F32"], q6k, change_type={"blk.0.ffn_up.weight": (np.zeros((4 * C, C // 256 * 210 or 210),
                                                                              np.uint8), GT.Q6_K)})
    with pytest.raises(GGUFFormatError, match="'blk.0.ffn_up.weight' is Q6_K; the course dequantizes F32, F16, "
                                              "Q8_0, Q4_0"):
        read_gguf(q6k)
    unknown = tmp_path / "unknown.gguf"
    _rewrite(files["F32"], unknown, extra={"blk.0.attn_q.weight": np.zeros((C, C), np.float32)})
    with pytest.raises(GGUFFormatError, match="does not have: blk.0.attn_q.weight"):
        read_gguf(unknown)
    wte = tiny.transformer.wte.weight.detach().numpy()
    tied = tmp_path / "tied.gguf"
    _rewrite(files["F32"], tied, extra={"output.weight": wte.copy()})
    assert torch.equal(read_gguf(tied).state_dict["wte.weight"], torch.from_numpy(wte))  # a copy is accepted
    untied = tmp_path / "untied.gguf"
    _rewrite(files["F32"], untied, extra={"output.weight": np.zeros((V, C), np.float32) + 0.5})
    with pytest.raises(GGUFFormatError, match="output.weight differs"):
        read_gguf(untied)


def test_gguf_is_imported_lazily_with_a_clear_error(monkeypatch):
    code = ("import sys, course_lib, course_lib.export, course_lib.export.gguf_blocks; "
            "assert 'gguf' not in sys.modules, 'imported gguf'; "
            "from course_lib.export import to_gguf; assert 'gguf' not in sys.modules; print('lazy')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "lazy" in result.stdout, result.stderr
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install onnx onnxruntime gguf"):
        ge._gguf()


def test_load_model_reads_a_gguf_file(files, windows, reference_logits):
    """``load_model("x.gguf")`` is the public door to the reader: same logits as ``load_gguf_model``, and a
    clear error for a task a GGUF file cannot serve."""
    from course_lib.export.gguf_export import load_gguf_model

    for qtype in ("F32", "Q8_0"):
        ours = load_model(str(files[qtype]), fast=False)  # the teaching path, as load_gguf_model returns it
        direct = load_gguf_model(files[qtype])
        assert torch.equal(logits_of(files[qtype], windows), direct(windows))
        assert torch.equal(ours(windows), direct(windows))
    with pytest.raises(ValueError, match="causal"):
        load_model(str(files["F32"]), task="base")
