"""The stored activations chapter 04 compares with are what transformers computes today,
and our encoder reproduces every one of them on the real all-MiniLM-L6-v2 weights."""

import pytest
import torch

from course_lib.assets import reference_activations

pytest.importorskip("transformers")


@pytest.mark.parametrize("reference", ["minilm-reference", "tiny-gpt2-reference"])
def test_committed_reference_is_current(reference):
    from reference_activations import compute  # tests/ is on sys.path (rootdir conftest-less import)

    stored, _ = reference_activations(reference)
    fresh = compute(reference)
    assert sorted(stored) == sorted(fresh)
    for name, tensor in fresh.items():
        assert stored[name].shape == tensor.shape, name
        assert torch.allclose(stored[name].double(), tensor.double(), atol=1e-5, rtol=0), name


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
        torch.testing.assert_close(x, ref["embeddings"], atol=1e-5, rtol=0)
        layer0 = model.encoder.layer[0]
        context, weights = layer0.attention.self(x, m, return_weights=True)
        torch.testing.assert_close(context, ref["layer0.attention.self"], atol=1e-5, rtol=0)
        torch.testing.assert_close(weights, ref["layer0.attention_weights"], atol=1e-5, rtol=0)
        attn = layer0.attention(x, m)
        torch.testing.assert_close(attn, ref["layer0.attention"], atol=1e-5, rtol=0)
        inter = layer0.intermediate(attn)
        torch.testing.assert_close(inter, ref["layer0.intermediate"], atol=1e-5, rtol=0)
        torch.testing.assert_close(layer0.output(inter, attn), ref["layer0.output"], atol=1e-5, rtol=0)
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
        torch.testing.assert_close(weights[longest], ref["layer0.attention_weights"][longest], atol=1e-5, rtol=0)
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
