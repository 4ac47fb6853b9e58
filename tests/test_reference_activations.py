"""The stored activations chapter 04 compares with are what transformers computes today,
and our encoder reproduces every one of them on the real all-MiniLM-L6-v2 weights.

Tolerance: 1e-5, scaled up for tensors whose values are larger than 2 (``tol``). The references
were computed on one CPU; on another (an AVX-512 Xeon vs the EPYC they were made on) float32
sums round differently: a GELU output of 24.44 came out 1.3e-5 away (5e-7 relative), and hidden
states up to 10.5 after 4 layers 1.9e-5 — float32 rounding, not a change. A real change (another
transformers, a wrong formula) moves them by 1e-3 or more."""

import pytest
import torch

from course_lib.assets import reference_activations

pytest.importorskip("transformers")


def tol(reference: torch.Tensor) -> float:
    """1e-5, or 1e-5 per 2 units of the tensor's largest value when that is above 2 (float32 rounding grows with it)."""
    return 1e-5 * max(1.0, reference.abs().max().item() / 2)


@pytest.mark.parametrize("reference", ["minilm-reference", "tiny-gpt2-reference"])
def test_committed_reference_is_current(reference):
    from reference_activations import compute  # tests/ is on sys.path (rootdir conftest-less import)

    stored, _ = reference_activations(reference)
    fresh = compute(reference)
    assert sorted(stored) == sorted(fresh)
    for name, tensor in fresh.items():
        assert stored[name].shape == tensor.shape, name
        assert torch.allclose(stored[name].double(), tensor.double(), atol=tol(stored[name]), rtol=0), name


def test_our_encoder_reproduces_every_stored_piece():
    from course_lib import load_model
    from course_lib.layers import padding_mask

    ref, sentences = reference_activations()
    assert len(sentences) == ref["input_ids"].shape[0]
    model = load_model("all-MiniLM-L6-v2")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    m = padding_mask(mask)
    with torch.no_grad():
        x = model.embeddings(ids)
        torch.testing.assert_close(x, ref["embeddings"], atol=tol(ref["embeddings"]), rtol=0)
        layer0 = model.encoder.layer[0]
        context, weights = layer0.attention.self(x, m, return_weights=True)
        for got, name in ((context, "layer0.attention.self"), (weights, "layer0.attention_weights")):
            torch.testing.assert_close(got, ref[name], atol=tol(ref[name]), rtol=0)
        attn = layer0.attention(x, m)
        torch.testing.assert_close(attn, ref["layer0.attention"], atol=tol(ref["layer0.attention"]), rtol=0)
        inter = layer0.intermediate(attn)
        torch.testing.assert_close(inter, ref["layer0.intermediate"], atol=tol(ref["layer0.intermediate"]), rtol=0)
        out = layer0.output(inter, attn)
        torch.testing.assert_close(out, ref["layer0.output"], atol=tol(ref["layer0.output"]), rtol=0)
        h = x
        for i, layer in enumerate(model.encoder.layer, start=1):
            h = layer(h, m)
            torch.testing.assert_close(h, ref[f"hidden_states.{i}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.pooler(h), ref["pooler_output"], atol=1e-4, rtol=0)


def test_our_gpt2_reproduces_every_stored_piece():
    from course_lib import load_model
    from course_lib.models.gpt2 import gpt2_attention_mask, gpt2_position_ids

    ref, prompts = reference_activations("tiny-gpt2-reference")
    model = load_model("tiny-gpt2")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    real = mask.bool()  # padding positions are meaningless outputs (and transformers' differ)
    attention_mask = gpt2_attention_mask(mask, 0, ids.size(1))
    with torch.no_grad():
        x = model.transformer.wte(ids) + model.transformer.wpe(gpt2_position_ids(mask, 0, ids.size(1)))
        torch.testing.assert_close(x[real], ref["embeddings"][real], atol=1e-6, rtol=0)
        block0 = model.transformer.h[0]
        _, weights = block0.attn(block0.ln_1(x), attention_mask, return_weights=True)
        longest = int(mask.sum(1).argmax())  # the unpadded row
        expected = ref["layer0.attention_weights"][longest]
        torch.testing.assert_close(weights[longest], expected, atol=tol(expected), rtol=0)
        h = x
        n = model.config.n_layer
        for i, block in enumerate(model.transformer.h, start=1):
            h = block(h, attention_mask)
            got = model.transformer.ln_f(h) if i == n else h
            torch.testing.assert_close(got[real], ref[f"hidden_states.{i}"][real], atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ids, mask)[:, -1], ref["last_logits"], atol=1e-4, rtol=0)
    first = torch.tensor([ids[0, mask[0].bool()].tolist()])
    assert torch.equal(model.generate(first, 40), ref["greedy_ids"])
    assert len(prompts) == ids.size(0)
