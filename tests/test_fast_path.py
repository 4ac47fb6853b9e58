"""load_model's default (fast) path gives the teaching path's results: GPT-2, Llama, the encoder, every quantized scheme.

``load_model(src)`` runs ``course_lib.fused.speed_up`` (PyTorch's fused kernels, float weights
stored in the layout this CPU reads fastest); ``load_model(src, fast=False)`` keeps chapter
02's layers. The tolerances stated here are the ones the README quotes:

- float32: logits / hidden states within 1e-4 (float32 sums in another order), greedy tokens identical;
- int8 / int4 (PyTorch's kernels take and return bfloat16, so a last-bit difference before a
  rounding can move a value by one bfloat16 step, 2^-8 of it): logits within 0.05 + 2^-7 of their
  size, and greedy tokens identical.

Both layouts are checked on both paths (``COURSE_MATVEC_LAYOUT``), whatever this CPU prefers.
"""

import pytest
import torch

from course_lib import fused, layers, load_model, load_tokenizer
from course_lib.assets import reference_activations
from course_lib.generation import generate_ids

QUANTIZED = ("int8", "int8-tensor", "int4", "int4-g32-sym", "int4-g64", "int4-g128", "int4-g128-sym")
PROMPTS = ("The for statement", "def read_config(path):", "A list is")
FLOAT_ATOL = 1e-4
QUANTIZED_ATOL, QUANTIZED_RTOL = 0.05, 2 ** -7


@pytest.fixture(params=fused.LAYOUTS)
def layout(request, monkeypatch):
    monkeypatch.setenv(fused.LAYOUT_VARIABLE, request.param)
    return request.param


def prompt_ids(name: str) -> list[torch.Tensor]:
    tok = load_tokenizer(name)
    return [torch.tensor([tok.encode(p).ids]) for p in PROMPTS]


def assert_same_generation(fast, teaching, prompts, atol: float, rtol: float = 0.0, new_tokens: int = 24) -> None:
    window = torch.cat([p[0] for p in prompts])[None]
    with torch.no_grad():
        got, expected = fast(window), teaching(window)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    for ids in prompts:
        a = generate_ids(fast, ids, new_tokens, eos_token_id=[])
        b = generate_ids(teaching, ids, new_tokens, eos_token_id=[])
        assert a.tolist() == b.tolist()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_decoders_float32(name, layout):
    fast, teaching = load_model(name), load_model(name, fast=False)
    assert fused.is_fused(fast) and not fused.is_fused(teaching)
    assert type(teaching.lm_head) is layers.Linear
    (head, table), = fast.tied_weights.items()
    assert fast.get_parameter(head) is fast.get_parameter(table)  # still tied: one tensor
    assert fused.weight_layout(fast.lm_head.weight) == layout
    assert fused.weight_layout(teaching.lm_head.weight) == "rows"  # the teaching path keeps the checkpoint's
    state, expected = fast.state_dict(), teaching.state_dict()
    assert list(state) == list(expected)
    for key in expected:
        assert torch.equal(state[key], expected[key]), key  # same values, only stored differently
    assert_same_generation(fast, teaching, prompt_ids(name), FLOAT_ATOL, new_tokens=40)


@pytest.mark.parametrize("scheme", QUANTIZED)
def test_gpt2_quantized(scheme, layout):
    fast, teaching = load_model("tiny-gpt2", quantize=scheme), load_model("tiny-gpt2", quantize=scheme, fast=False)
    assert fused.is_fused(fast) and not fused.is_fused(teaching)
    assert_same_generation(fast, teaching, prompt_ids("tiny-gpt2"), QUANTIZED_ATOL, QUANTIZED_RTOL)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_llama_quantized(scheme):
    fast, teaching = load_model("tiny-llama", quantize=scheme), load_model("tiny-llama", quantize=scheme, fast=False)
    assert_same_generation(fast, teaching, prompt_ids("tiny-llama"), QUANTIZED_ATOL, QUANTIZED_RTOL)


@pytest.mark.parametrize("scheme", [None, "int8", "int4"])
def test_encoder(scheme, layout):
    ref, _ = reference_activations()
    ids, mask = ref["input_ids"], ref["attention_mask"]
    fast = load_model("all-MiniLM-L6-v2", quantize=scheme)
    teaching = load_model("all-MiniLM-L6-v2", quantize=scheme, fast=False)
    with torch.no_grad():
        got, expected = fast(ids, mask), teaching(ids, mask)
    real = mask.bool()  # padding positions are meaningless outputs
    tolerance = dict(atol=FLOAT_ATOL, rtol=0) if scheme is None else dict(atol=QUANTIZED_ATOL, rtol=QUANTIZED_RTOL)
    torch.testing.assert_close(got[real], expected[real], **tolerance)
    if scheme is None:
        torch.testing.assert_close(got, ref["hidden_states.6"], atol=FLOAT_ATOL, rtol=0)  # transformers' numbers


def test_fast_model_trains_like_the_teaching_one(layout):
    ids = torch.tensor([load_tokenizer("tiny-gpt2").encode("for item in items: print(item)").ids])
    grads = {}
    for fast in (True, False):
        model = load_model("tiny-gpt2", fast=fast)  # eval mode: no dropout, whose random draws differ
        logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).backward()
        grads[fast] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_saved_fast_model_is_the_checkpoint(tmp_path):
    fast, teaching = load_model("tiny-gpt2"), load_model("tiny-gpt2", fast=False)
    fast.save_pretrained(tmp_path / "fast")
    teaching.save_pretrained(tmp_path / "teaching")
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == \
        (tmp_path / "teaching" / "model.safetensors").read_bytes()


def test_measured_layout_and_errors(monkeypatch):
    monkeypatch.delenv(fused.LAYOUT_VARIABLE, raising=False)
    monkeypatch.setattr(fused, "_measured", {})
    assert fused.matvec_layout(torch.zeros(8, 8)) == "columns"  # too small to measure: the default
    assert "not measured" in fused.matvec_layout_report()
    big = torch.randn(2048, 2048)
    chosen = fused.matvec_layout(big)
    assert chosen in fused.LAYOUTS and fused._measured["layout"] == chosen
    assert set(fused._measured["seconds"]) == set(fused.LAYOUTS)
    assert all(s > 0 for s in fused._measured["seconds"].values())
    assert "measured on a 2048x2048 weight" in fused.matvec_layout_report()
    monkeypatch.setenv(fused.LAYOUT_VARIABLE, "diagonal")
    with pytest.raises(ValueError, match="COURSE_MATVEC_LAYOUT='diagonal': use 'rows' or 'columns'"):
        fused.matvec_layout(big)
    with pytest.raises(TypeError, match="fast must be True .* or False"):
        load_model("tiny-gpt2", fast="yes")


def test_layouts_hold_the_same_values():
    w = torch.randn(5, 3)
    columns = fused.as_columns(w)
    assert fused.weight_layout(w) == "rows" and fused.weight_layout(columns) == "columns"
    assert torch.equal(columns, w) and columns.shape == w.shape
    assert fused.weight_layout(w[:, :2]) is None
    x = torch.randn(2, 3)
    torch.testing.assert_close(fused.fused_linear(x, columns), fused.fused_linear(x, w), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pruned", [False, True])
def test_gpt2_decoding_steps_take_the_short_block_with_the_same_logits(pruned, monkeypatch):
    """A one-token step with the cache runs FusedGPT2Block's short path (prompts do not), with the teaching logits."""
    from course_lib.generation import KVCache
    from course_lib.models.gpt2 import GPT2Block
    from course_lib.surgery import prune_heads

    fast, teaching = load_model("tiny-gpt2"), load_model("tiny-gpt2", fast=False)
    if pruned:  # fewer heads in some layers: c_attn is narrower than 3C
        for model in (fast, teaching):
            prune_heads(model, {0: [1], 2: [0, 3]})
    assert all(type(block) is fused.FusedGPT2Block for block in fast.transformer.h)
    long_path = []
    real = GPT2Block.forward

    def counted(self, *args, **kwargs):
        if type(self) is fused.FusedGPT2Block:
            long_path.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT2Block, "forward", counted)
    caches = {name: KVCache(fast.config.n_layer, 32) for name in ("fast", "teaching")}
    with torch.no_grad():
        prompt = prompt_ids("tiny-gpt2")[0]
        torch.testing.assert_close(fast(prompt, kv_cache=caches["fast"]), teaching(prompt, kv_cache=caches["teaching"]),
                                   atol=FLOAT_ATOL, rtol=0)
        assert len(long_path) == fast.config.n_layer  # the prompt: every block's full forward
        for token in (5, 17, 200, 3000):
            step = torch.tensor([[token]])
            got = fast(step, kv_cache=caches["fast"], last_only=True)
            torch.testing.assert_close(got, teaching(step, kv_cache=caches["teaching"], last_only=True),
                                       atol=FLOAT_ATOL, rtol=0)
    assert len(long_path) == fast.config.n_layer  # the steps never took it
    assert caches["fast"].length == caches["teaching"].length == prompt.size(1) + 4
